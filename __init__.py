"""vistok: visual tokenizers and multimodal models of the recent literature as native transformers models.

``import vistok`` registers every config, model, processor and pipeline with transformers' Auto classes.
"""

__version__ = "0.1.0"

from .modeling import (
    FLEXTOK_VAE_VARIANTS,
    FLEXTOK_VARIANTS,
    FlexTokConfig,
    FlexTokModel,
    FlexTokPreTrainedModel,
)
from .modeling import Emu3VisionTokenizer
from .modeling import LARP_VARIANTS, LARPConfig, LARPModel, LARPPreTrainedModel
from .modeling import MAETOK_VARIANTS, MAETokConfig, MAETokModel, MAETokPreTrainedModel
from .modeling import TITOK_VARIANTS, TiTokConfig, TiTokModel, TiTokPreTrainedModel
from .processing import FlexTokImageProcessor, FlexTokImageProcessorPil
from .processing import Emu3VisionTokenizerImageProcessor, Emu3VisionTokenizerImageProcessorPil
from .processing import MAETokImageProcessor, MAETokImageProcessorPil
from .processing import ImageTokenizationPipeline, TiTokImageProcessor, TiTokImageProcessorPil
from .processing import VideoTokenizationPipeline
from .processing import __all__ as _processing_names


if "LARPVideoProcessor" in _processing_names:
    from .processing import Emu3VideoProcessor, LARPVideoProcessor


__all__ = [
    "Emu3VisionTokenizer",
    "Emu3VisionTokenizerImageProcessor",
    "Emu3VisionTokenizerImageProcessorPil",
    "FLEXTOK_VAE_VARIANTS",
    "FLEXTOK_VARIANTS",
    "FlexTokConfig",
    "FlexTokImageProcessor",
    "FlexTokImageProcessorPil",
    "FlexTokModel",
    "FlexTokPreTrainedModel",
    "LARP_VARIANTS",
    "LARPConfig",
    "LARPModel",
    "LARPPreTrainedModel",
    "MAETOK_VARIANTS",
    "MAETokConfig",
    "MAETokImageProcessor",
    "MAETokImageProcessorPil",
    "MAETokModel",
    "MAETokPreTrainedModel",
    "TITOK_VARIANTS",
    "ImageTokenizationPipeline",
    "TiTokConfig",
    "TiTokImageProcessor",
    "TiTokImageProcessorPil",
    "TiTokModel",
    "TiTokPreTrainedModel",
    "VideoTokenizationPipeline",
]
if "LARPVideoProcessor" in _processing_names:
    __all__.append("LARPVideoProcessor")
