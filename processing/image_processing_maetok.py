"""MAETok image processors: images -> [-1, 1] pixel values, and reconstructions -> images.

The original code prepares images with ADM's `center_crop_arr`: halve the image with BOX filtering while its shorter
side is at least twice the target, resize the shorter side to the target with BICUBIC (other side rounded), center
crop, then `Normalize(0.5, 0.5)`. `MAETokImageProcessorPil` reproduces that exactly for uint8 / PIL inputs;
`MAETokImageProcessor` (torchvision backend) does a single antialiased bicubic resize instead, which is close but not
bit-identical.
"""

import numpy as np
from PIL import Image
from transformers.image_processing_backends import PilBackend, TorchvisionBackend

from .image_processing_common import SignedRangeDefaults, TokenizerPostprocessMixin


class MAETokImageProcessor(TokenizerPostprocessMixin, SignedRangeDefaults, TorchvisionBackend):
    r"""MAETok preprocessing (torchvision backend): RGB, antialiased bicubic resize of the shorter side to 256
    (512 for maetok-b-128-512), center crop, scale to [0, 1] and normalise with mean = std = 0.5 to **[-1, 1]**.
    `pixel_values`: [B, 3, 256, 256]. `postprocess(reconstruction)` maps [-1, 1] back to images."""


def adm_resize(image: Image.Image, target: int) -> Image.Image:
    """ADM's resize step: BOX halvings while the shorter side is >= 2 x `target`, then a BICUBIC resize that brings
    the shorter side to `target` (the other side rounded)."""
    while min(image.size) >= 2 * target:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = target / min(image.size)
    return image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)


class MAETokImageProcessorPil(TokenizerPostprocessMixin, SignedRangeDefaults, PilBackend):
    r"""MAETok preprocessing with PIL, identical to the original ADM `center_crop_arr` + `Normalize(0.5, 0.5)`
    pipeline for uint8 / PIL images: BOX halvings, bicubic resize of the shorter side (other side rounded), center
    crop, **[-1, 1]**. Float inputs fall back to a plain bicubic resize of the shorter side."""

    def resize(self, image: np.ndarray, size, resample=None, reducing_gap=None, **kwargs) -> np.ndarray:
        if not size.shortest_edge or size.longest_edge or image.dtype != np.uint8 or image.shape[0] not in (1, 3, 4):
            return super().resize(image, size, resample=resample, reducing_gap=reducing_gap, **kwargs)
        # the PIL backend hands over channel-first arrays
        channels_last = np.moveaxis(image, 0, -1)
        pil_image = Image.fromarray(channels_last[..., 0] if channels_last.shape[-1] == 1 else channels_last)
        resized = np.asarray(adm_resize(pil_image, size.shortest_edge))
        if resized.ndim == 2:
            resized = resized[..., None]
        return np.ascontiguousarray(np.moveaxis(resized, -1, 0))


__all__ = ["MAETokImageProcessor", "MAETokImageProcessorPil", "adm_resize"]
