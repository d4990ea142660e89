"""Image processors of the Emu3 vision tokenizer: smart resize to multiples of the spatial factor, [-1, 1] pixels.

The original `Emu3VisionVQImageProcessor` (baaivision/Emu3): RGB; `smart_resize` (round each side to a multiple of
`spatial_factor`, then rescale into the `[min_pixels, max_pixels]` budget keeping the aspect ratio, which must stay
<= 5); BICUBIC; rescale 1/255; normalise with mean = std = 0.5. It resizes every image of a call to the size computed
from the first one and stacks them. Here each image gets its own size; a batch of different sizes is padded bottom/
right (as transformers' `Emu3ImageProcessor` does) and `image_sizes` says where each image is, which
`Emu3VisionTokenizer.encode(pixel_values, image_sizes=...)` understands (every image is encoded at its own size).
`Emu3VisionTokenizerImageProcessorPil` resizes with PIL like the original; the torchvision backend is close, not
bit-identical.
"""

import math

import torch
from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_utils import ChannelDimension, PILImageResampling, SizeDict, get_image_size

from .image_processing_common import SignedRangeDefaults, TokenizerPostprocessMixin


def emu3_smart_resize(
    height: int, width: int, factor: int = 8, min_pixels: int = 512 * 512, max_pixels: int = 1024 * 1024,
    max_aspect_ratio: float = 5.0,
) -> tuple[int, int]:
    """The original Emu3 target size: sides rounded to multiples of `factor`; if the area leaves
    `[min_pixels, max_pixels]`, both sides are scaled by the same factor (floored to multiples when shrinking, ceiled
    when growing)."""
    if height < factor or width < factor:
        raise ValueError(f"image height {height} and width {width} must be at least the spatial factor {factor}.")
    if max(height, width) / min(height, width) > max_aspect_ratio:
        raise ValueError(
            f"the aspect ratio must be at most {max_aspect_ratio}, got {max(height, width) / min(height, width):.3f} "
            f"({height}x{width})."
        )
    resized_height, resized_width = round(height / factor) * factor, round(width / factor) * factor
    if resized_height * resized_width > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        resized_height = math.floor(height / beta / factor) * factor
        resized_width = math.floor(width / beta / factor) * factor
    elif resized_height * resized_width < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        resized_height = math.ceil(height * beta / factor) * factor
        resized_width = math.ceil(width * beta / factor) * factor
    return resized_height, resized_width


def pixel_budget(size: dict, min_pixels: int | None = None, max_pixels: int | None = None) -> dict:
    """`size` = {"min_pixels", "max_pixels"} with the original's `min_pixels`/`max_pixels` arguments applied."""
    size = dict(size)
    if min_pixels is not None:
        size["min_pixels"] = min_pixels
    if max_pixels is not None:
        size["max_pixels"] = max_pixels
    return size


def smart_or_fixed_size(height: int, width: int, size: SizeDict, factor: int) -> tuple[int, int]:
    """`size = {"height", "width"}`: that fixed size (multiples of `factor`); else the smart resize within
    `size = {"min_pixels", "max_pixels"}`."""
    if size.height and size.width:
        if size.height % factor or size.width % factor:
            raise ValueError(f"a fixed size must be a multiple of the spatial factor {factor}, got "
                             f"{size.height}x{size.width}.")
        return size.height, size.width
    if not size.min_pixels or not size.max_pixels:
        raise ValueError(f"size must hold 'min_pixels' and 'max_pixels' (smart resize) or 'height' and 'width', got "
                         f"{dict(size)}.")
    return emu3_smart_resize(height, width, factor, size.min_pixels, size.max_pixels)


class Emu3SmartResizeMixin(TokenizerPostprocessMixin):
    """Smart resize (`size = {"min_pixels", "max_pixels"}`, `spatial_factor`) or a fixed `size = {"height",
    "width"}`, padding of mixed-size batches and `image_sizes`, shared by both backends."""

    resample = PILImageResampling.BICUBIC
    size = {"min_pixels": 512 * 512, "max_pixels": 1024 * 1024}
    spatial_factor = 8
    do_center_crop = False
    do_pad = True
    model_input_names = ["pixel_values", "image_sizes"]

    def __init__(self, min_pixels: int | None = None, max_pixels: int | None = None, **kwargs):
        super().__init__(size=pixel_budget(kwargs.pop("size", None) or self.size, min_pixels, max_pixels), **kwargs)

    def target_size(self, height: int, width: int, size: SizeDict | None = None) -> tuple[int, int]:
        size = size if size is not None else SizeDict(**self.size)
        return smart_or_fixed_size(height, width, size, self.spatial_factor)

    def resize(self, image, size: SizeDict, resample=None, **kwargs):
        height, width = get_image_size(image, channel_dim=ChannelDimension.FIRST)
        target_height, target_width = self.target_size(height, width, size)
        return super().resize(image, SizeDict(height=target_height, width=target_width), resample=resample, **kwargs)

    def _preprocess(self, images, do_resize: bool, size: SizeDict, do_pad: bool | None = None, **kwargs):
        sizes = [tuple(get_image_size(image, channel_dim=ChannelDimension.FIRST)) for image in images]
        if do_resize:
            sizes = [self.target_size(height, width, size) for height, width in sizes]
        kwargs.pop("pad_size", None)
        outputs = super()._preprocess(
            images, do_resize=do_resize, size=size, do_pad=bool(do_pad) and len(set(sizes)) > 1, pad_size=None,
            **kwargs,
        )
        outputs["image_sizes"] = torch.tensor(sizes, dtype=torch.long)
        return outputs


class Emu3VisionTokenizerImageProcessor(Emu3SmartResizeMixin, SignedRangeDefaults, TorchvisionBackend):
    r"""Emu3 vision tokenizer preprocessing (torchvision backend): RGB, smart resize to multiples of `spatial_factor`
    inside `[min_pixels, max_pixels]` (bicubic, antialiased), **[-1, 1]**. Returns `pixel_values` [B, 3, H, W] (a
    mixed-size batch padded bottom/right) and `image_sizes` [B, 2]."""


class Emu3VisionTokenizerImageProcessorPil(Emu3SmartResizeMixin, SignedRangeDefaults, PilBackend):
    r"""Emu3 vision tokenizer preprocessing with PIL, as the original `Emu3VisionVQImageProcessor`: RGB, smart resize
    (PIL bicubic), **[-1, 1]**; plus padding and `image_sizes` for mixed-size batches."""


__all__ = [
    "Emu3SmartResizeMixin", "Emu3VisionTokenizerImageProcessor", "Emu3VisionTokenizerImageProcessorPil",
    "emu3_smart_resize", "pixel_budget", "smart_or_fixed_size",
]
