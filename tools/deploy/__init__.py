"""Deployment tools: tools/deploy/export_onnx.py exports the box refinement to ONNX and checks it."""
