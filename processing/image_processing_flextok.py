"""FlexTok image processors: resize the shorter side to 256 (bilinear, antialiased), center crop 256x256, scale to
[0, 1] and normalise with mean = std = 0.5, i.e. **[-1, 1]** (the original demo's `torchvision.transforms` pipeline).
`postprocess` maps reconstructions in [-1, 1] back to images."""

from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_utils import PILImageResampling

from .image_processing_common import SignedRangeDefaults, TokenizerPostprocessMixin, TorchvisionCenterCropMixin


class _FlexTokDefaults(SignedRangeDefaults):
    # `transforms.Resize(256)` in the original: bilinear
    resample = PILImageResampling.BILINEAR


class FlexTokImageProcessor(
    TokenizerPostprocessMixin, TorchvisionCenterCropMixin, _FlexTokDefaults, TorchvisionBackend
):
    r"""FlexTok preprocessing (torchvision backend): RGB, bilinear antialiased resize of the shorter side to 256,
    center crop 256, scale to [0, 1], normalise with mean = std = 0.5 -> `pixel_values` [B, 3, 256, 256] in [-1, 1]."""


class FlexTokImageProcessorPil(
    TokenizerPostprocessMixin, TorchvisionCenterCropMixin, _FlexTokDefaults, PilBackend
):
    r"""FlexTok preprocessing with PIL (identical to the original `Resize(256)`, `CenterCrop(256)`, `ToTensor()`,
    `Normalize(0.5, 0.5)` pipeline on PIL images): `pixel_values` in [-1, 1]."""


__all__ = ["FlexTokImageProcessor", "FlexTokImageProcessorPil"]
