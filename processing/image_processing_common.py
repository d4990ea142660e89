"""What every vistok tokenizer's image processor shares: the two input ranges and ``postprocess``.

Each tokenizer gets two classes, as in transformers 5.x: a torchvision backend (default) and a PIL backend
(``backend="pil"``) that reproduces the original code's PIL/``torchvision.transforms`` preprocessing exactly. Both
combine `TokenizerPostprocessMixin`, one of the range defaults below and the backend.
"""

import torch
from PIL import Image
from transformers.image_utils import PILImageResampling


class TokenizerPostprocessMixin:
    """Inverse of the preprocessing normalisation: model-range reconstructions -> images (and a clear error for an
    empty image list on the way in)."""

    def preprocess(self, images, *args, **kwargs):
        if isinstance(images, (list, tuple)) and len(images) == 0:
            raise ValueError("got an empty list of images; pass at least one image (PIL image, array or tensor).")
        return super().preprocess(images, *args, **kwargs)

    def postprocess(self, reconstruction, output_type: str = "pil"):
        """``reconstruction``: [B, C, H, W] (or [C, H, W]) in the model's range -> list of PIL images
        (``output_type="pil"``), a uint8 array [B, H, W, C] (``"np"``) or a float tensor in [0, 1] (``"pt"``)."""
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}.")
        images = torch.as_tensor(reconstruction).detach().float().cpu()
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4:
            raise ValueError(f"reconstruction must have shape [batch, channels, height, width], got {tuple(images.shape)}.")
        if self.do_normalize:
            mean = torch.tensor(self.image_mean, dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(self.image_std, dtype=torch.float32).view(1, -1, 1, 1)
            images = images * std + mean
        if self.do_rescale:
            images = images * (self.rescale_factor * 255.0)
        images = images.clamp(0.0, 1.0)
        if output_type == "pt":
            return images
        array = (images * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        if output_type == "np":
            return array
        return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in array]


class TorchvisionCenterCropMixin:
    """``transforms.CenterCrop``'s offsets, ``round((size - crop) / 2)``, where transformers floors them: the two differ
    by one pixel whenever the margin is odd, and the original TiTok/FlexTok pipelines use ``CenterCrop``."""

    def center_crop(self, image, size, **kwargs):
        height, width = image.shape[-2:]
        if size.height is None or size.width is None or size.height > height or size.width > width:
            return super().center_crop(image, size, **kwargs)
        top, left = int(round((height - size.height) / 2.0)), int(round((width - size.width) / 2.0))
        return image[..., top : top + size.height, left : left + size.width]


class UnitRangeDefaults:
    """Resize the shorter side, center crop, scale to [0, 1], no normalisation."""

    resample = PILImageResampling.BICUBIC
    size = {"shortest_edge": 256}
    crop_size = {"height": 256, "width": 256}
    image_mean = [0.0, 0.0, 0.0]
    image_std = [1.0, 1.0, 1.0]
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = False
    do_convert_rgb = True


class SignedRangeDefaults(UnitRangeDefaults):
    """The same, then normalised with mean = std = 0.5 to [-1, 1]."""

    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    do_normalize = True


def center_crop_image_processor(processor_class, image_size: int | list[int], **kwargs):
    """A processor that resizes the shorter side to ``image_size`` and center-crops an ``image_size`` square (what the
    converters save next to a tokenizer released at that size). A ``[height, width]`` pair (a tokenizer made for
    non-square images) resizes the shorter side to the longer of the two, so that every image covers the crop."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    return processor_class(
        size={"shortest_edge": max(height, width)}, crop_size={"height": height, "width": width}, **kwargs
    )


__all__ = [
    "SignedRangeDefaults",
    "TokenizerPostprocessMixin",
    "TorchvisionCenterCropMixin",
    "UnitRangeDefaults",
    "center_crop_image_processor",
]
