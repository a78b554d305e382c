"""Refinement outside Python: ``StaticBoxRefiner`` (an ``EBMBoxHead`` and its ``RefineConfig`` as
one fixed-shape module, for ``torch.compile``, CUDA graphs and ONNX) and the ONNX export."""
from .refiner import StaticBoxRefiner, export_onnx

__all__ = ['StaticBoxRefiner', 'export_onnx']
