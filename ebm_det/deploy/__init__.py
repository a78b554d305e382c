"""Refinement outside Python: ``StaticBoxRefiner`` / ``StaticBoxRefiner3D`` (an ``EBMBoxHead`` /
``EBMBoxHead3D`` and its ``RefineConfig`` as one fixed-shape module, for ``torch.compile``, CUDA
graphs and ONNX) and the ONNX export."""
from .refiner import StaticBoxRefiner, StaticBoxRefiner3D, export_onnx, static_refiner_for

__all__ = ['StaticBoxRefiner', 'StaticBoxRefiner3D', 'export_onnx', 'static_refiner_for']
