"""vistok: visual tokenizers and multimodal models of the recent literature as native transformers models.

``import vistok`` registers every config, model, processor and pipeline with transformers' Auto classes.
"""

__version__ = "0.1.0"

from .modeling import TITOK_VARIANTS, TiTokConfig, TiTokModel, TiTokPreTrainedModel
from .processing import ImageTokenizationPipeline, TiTokImageProcessor, TiTokImageProcessorPil


__all__ = [
    "TITOK_VARIANTS",
    "ImageTokenizationPipeline",
    "TiTokConfig",
    "TiTokImageProcessor",
    "TiTokImageProcessorPil",
    "TiTokModel",
    "TiTokPreTrainedModel",
]
