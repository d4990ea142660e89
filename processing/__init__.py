"""vistok processors and pipelines; importing this module registers them with transformers."""

from transformers import AutoImageProcessor, AutoProcessor, AutoVideoProcessor
from transformers.utils import is_torchvision_available

from ..modeling import FlexTokConfig, LlavaMiniConfig, MAETokConfig, TiTokConfig
from .image_processing_flextok import FlexTokImageProcessor, FlexTokImageProcessorPil
from .image_processing_maetok import MAETokImageProcessor, MAETokImageProcessorPil
from .processing_llava_mini import (
    LlavaMiniImageProcessor,
    LlavaMiniImageProcessorPil,
    LlavaMiniProcessor,
    LlavaMiniVideoProcessor,
)
from .image_processing_tokenizer import TiTokImageProcessor, TiTokImageProcessorPil
from .pipeline_image_tokenization import ImageTokenizationPipeline, register_pipelines


def register() -> None:
    """Registers every vistok image processor and pipeline (idempotent)."""
    for config_class, torchvision_class, pil_class in (
        (TiTokConfig, TiTokImageProcessor, TiTokImageProcessorPil),
        (FlexTokConfig, FlexTokImageProcessor, FlexTokImageProcessorPil),
        (MAETokConfig, MAETokImageProcessor, MAETokImageProcessorPil),
        (LlavaMiniConfig, LlavaMiniImageProcessor, LlavaMiniImageProcessorPil),
    ):
        AutoImageProcessor.register(
            config_class, image_processor_classes={"torchvision": torchvision_class, "pil": pil_class}, exist_ok=True
        )
    AutoVideoProcessor.register(LlavaMiniConfig, LlavaMiniVideoProcessor, exist_ok=True)
    AutoProcessor.register(LlavaMiniConfig, LlavaMiniProcessor, exist_ok=True)
    register_pipelines()
    if is_torchvision_available():  # transformers' video processors need torchvision
        from .video_io import install_pyav_fallback

        install_pyav_fallback()


register()

__all__ = ["LlavaMiniImageProcessor", "LlavaMiniImageProcessorPil", "LlavaMiniProcessor", "LlavaMiniVideoProcessor",
           "FlexTokImageProcessor", "FlexTokImageProcessorPil", "ImageTokenizationPipeline", "MAETokImageProcessor",
           "MAETokImageProcessorPil", "TiTokImageProcessor", "TiTokImageProcessorPil"]
