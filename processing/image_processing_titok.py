"""TiTok image processors: RGB, bicubic resize of the shorter side to 256, center crop, scale to **[0, 1]**."""

from transformers.image_processing_backends import PilBackend, TorchvisionBackend

from .image_processing_common import TokenizerPostprocessMixin, TorchvisionCenterCropMixin, UnitRangeDefaults


class TiTokImageProcessor(
    TokenizerPostprocessMixin, TorchvisionCenterCropMixin, UnitRangeDefaults, TorchvisionBackend
):
    r"""TiTok preprocessing (torchvision backend): RGB, bicubic resize of the shorter side to 256 with antialiasing,
    center crop 256, scale to **[0, 1]**, no mean/std normalisation. `pixel_values`: [B, 3, 256, 256]."""


class TiTokImageProcessorPil(
    TokenizerPostprocessMixin, TorchvisionCenterCropMixin, UnitRangeDefaults, PilBackend
):
    r"""TiTok preprocessing with PIL (identical to the original `torchvision.transforms` pipeline on PIL images):
    RGB, bicubic resize of the shorter side to 256, center crop 256, scale to **[0, 1]**."""


__all__ = ["TiTokImageProcessor", "TiTokImageProcessorPil"]
