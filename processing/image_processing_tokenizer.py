"""Image processors of the vistok tokenizers: resize + center crop into the model's input range, and
``postprocess(reconstruction)`` back to PIL images / uint8 arrays.

Each tokenizer gets two classes, as in transformers 5.x: a torchvision backend (default) and a PIL backend
(``backend="pil"``), which reproduces the original code's PIL/``torchvision.transforms`` preprocessing exactly.
"""

import torch
from PIL import Image
from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_utils import PILImageResampling


class TokenizerPostprocessMixin:
    """Inverse of the preprocessing normalisation: model-range reconstructions -> images."""

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


class _UnitRangeDefaults:
    # resize the shorter side, center crop, scale to [0, 1], no normalisation
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


class _SignedRangeDefaults(_UnitRangeDefaults):
    # same, then normalised to [-1, 1]
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    do_normalize = True


class TiTokImageProcessor(TokenizerPostprocessMixin, TorchvisionCenterCropMixin, _UnitRangeDefaults, TorchvisionBackend):
    r"""TiTok preprocessing (torchvision backend): RGB, bicubic resize of the shorter side to 256 with antialiasing,
    center crop 256, scale to **[0, 1]**, no mean/std normalisation. `pixel_values`: [B, 3, 256, 256]."""


class TiTokImageProcessorPil(TokenizerPostprocessMixin, TorchvisionCenterCropMixin, _UnitRangeDefaults, PilBackend):
    r"""TiTok preprocessing with PIL (identical to the original `torchvision.transforms` pipeline on PIL images):
    RGB, bicubic resize of the shorter side to 256, center crop 256, scale to **[0, 1]**."""


__all__ = ["TiTokImageProcessor", "TiTokImageProcessorPil", "TokenizerPostprocessMixin", "TorchvisionCenterCropMixin"]
