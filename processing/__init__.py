"""vistok processors and pipelines; importing this module registers them with transformers."""

from transformers import AutoImageProcessor, Emu3VQVAEConfig
from transformers.utils import is_torchvision_available

from ..modeling import FlexTokConfig, LARPConfig, MAETokConfig, TiTokConfig
from .image_processing_emu3 import Emu3VisionTokenizerImageProcessor, Emu3VisionTokenizerImageProcessorPil
from .image_processing_flextok import FlexTokImageProcessor, FlexTokImageProcessorPil
from .image_processing_maetok import MAETokImageProcessor, MAETokImageProcessorPil
from .image_processing_tokenizer import TiTokImageProcessor, TiTokImageProcessorPil
from .pipeline_image_tokenization import ImageTokenizationPipeline, register_pipelines
from .pipeline_video_tokenization import VideoTokenizationPipeline, register_video_pipelines


if is_torchvision_available():  # transformers' video processors are torchvision-only
    from .video_processing_emu3 import Emu3VideoProcessor
    from .video_processing_larp import LARPVideoProcessor


def register() -> None:
    """Registers every vistok image processor and pipeline (idempotent)."""
    for config_class, torchvision_class, pil_class in (
        (TiTokConfig, TiTokImageProcessor, TiTokImageProcessorPil),
        (FlexTokConfig, FlexTokImageProcessor, FlexTokImageProcessorPil),
        (MAETokConfig, MAETokImageProcessor, MAETokImageProcessorPil),
        (Emu3VQVAEConfig, Emu3VisionTokenizerImageProcessor, Emu3VisionTokenizerImageProcessorPil),
    ):
        AutoImageProcessor.register(
            config_class, image_processor_classes={"torchvision": torchvision_class, "pil": pil_class}, exist_ok=True
        )
    if is_torchvision_available():
        from transformers import AutoVideoProcessor

        AutoVideoProcessor.register(LARPConfig, LARPVideoProcessor, exist_ok=True)
        AutoVideoProcessor.register(Emu3VQVAEConfig, Emu3VideoProcessor, exist_ok=True)
    register_pipelines()
    register_video_pipelines()


register()

__all__ = ["Emu3VisionTokenizerImageProcessor", "Emu3VisionTokenizerImageProcessorPil", "FlexTokImageProcessor",
           "FlexTokImageProcessorPil", "ImageTokenizationPipeline", "MAETokImageProcessor", "MAETokImageProcessorPil",
           "TiTokImageProcessor", "TiTokImageProcessorPil", "VideoTokenizationPipeline"]
if is_torchvision_available():
    __all__ += ["Emu3VideoProcessor", "LARPVideoProcessor"]
