"""Conversion of the original released checkpoints into vistok models (``vistok-convert``)."""

from .utils import ConversionError, ConversionResult, load_checkpoint, rename_state_dict, save_conversion

__all__ = ["ConversionError", "ConversionResult", "load_checkpoint", "rename_state_dict", "save_conversion"]
