"""vistok processors and pipelines; importing this module registers them with transformers."""

from transformers import AutoImageProcessor
from transformers.utils import is_torchvision_available

from ..modeling import FlexTokConfig, MAETokConfig, OlaConfig, TiTokConfig
from .feature_extraction_ola import OlaFeatureExtractor
from .image_processing_flextok import FlexTokImageProcessor, FlexTokImageProcessorPil
from .image_processing_maetok import MAETokImageProcessor, MAETokImageProcessorPil
from .image_processing_ola import OlaImageProcessor
from .image_processing_tokenizer import TiTokImageProcessor, TiTokImageProcessorPil
from .pipeline_image_tokenization import ImageTokenizationPipeline, register_pipelines
from .processing_ola import OlaProcessor


def register() -> None:
    """Registers every vistok image processor and pipeline (idempotent)."""
    for config_class, torchvision_class, pil_class in (
        (TiTokConfig, TiTokImageProcessor, TiTokImageProcessorPil),
        (FlexTokConfig, FlexTokImageProcessor, FlexTokImageProcessorPil),
        (MAETokConfig, MAETokImageProcessor, MAETokImageProcessorPil),
    ):
        AutoImageProcessor.register(
            config_class, image_processor_classes={"torchvision": torchvision_class, "pil": pil_class}, exist_ok=True
        )
    register_pipelines()
    if is_torchvision_available():  # transformers' video processors need torchvision
        from .video_io import install_pyav_fallback

        install_pyav_fallback()
    register_ola()


def register_ola() -> None:
    from transformers import AutoFeatureExtractor, AutoProcessor

    AutoImageProcessor.register(
        OlaConfig, image_processor_classes={"torchvision": OlaImageProcessor, "pil": OlaImageProcessor}, exist_ok=True
    )
    AutoFeatureExtractor.register(OlaConfig, OlaFeatureExtractor, exist_ok=True)
    AutoProcessor.register(OlaConfig, OlaProcessor, exist_ok=True)


register()

__all__ = ["OlaFeatureExtractor", "OlaImageProcessor", "OlaProcessor", "FlexTokImageProcessor", "FlexTokImageProcessorPil", "ImageTokenizationPipeline", "MAETokImageProcessor",
           "MAETokImageProcessorPil", "TiTokImageProcessor", "TiTokImageProcessorPil"]
