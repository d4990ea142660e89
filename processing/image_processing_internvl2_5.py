"""InternVL2.5 tiling with the original's ``use_thumbnail`` switch.

transformers' InternVL processor tiles images with ``GotOcr2ImageProcessor(Pil)``, which always appends a thumbnail
of the whole image when an image is cut into more than one tile. The original ``dynamic_preprocess`` appends it only
when the checkpoint's config says ``use_thumbnail: true`` (every released InternVL2.5 model does). These subclasses
add that switch; the converter uses them only for checkpoints with ``use_thumbnail: false``.
"""

from transformers import GotOcr2ImageProcessor, GotOcr2ImageProcessorPil
from transformers.models.got_ocr2.image_processing_got_ocr2 import GotOcr2ImageProcessorKwargs


class InternVLChatImageProcessorKwargs(GotOcr2ImageProcessorKwargs, total=False):
    r"""
    use_thumbnail (`bool`, *optional*, defaults to `self.use_thumbnail`):
        Whether an image cut into several tiles also gets a thumbnail of the whole image (appended last).
    """

    use_thumbnail: bool


class _ThumbnailSwitchMixin:
    use_thumbnail = True
    valid_kwargs = InternVLChatImageProcessorKwargs

    def crop_image_to_patches(self, images, min_patches, max_patches, use_thumbnail=True, **kwargs):
        """GotOcr2's tiling (row-major tiles of the closest aspect-ratio grid) with the thumbnail only when both the
        call and ``self.use_thumbnail`` ask for it."""
        return super().crop_image_to_patches(images, min_patches, max_patches,
                                             use_thumbnail=use_thumbnail and self.use_thumbnail, **kwargs)


class InternVLChatImageProcessor(_ThumbnailSwitchMixin, GotOcr2ImageProcessor):
    r"""``GotOcr2ImageProcessor`` (torchvision backend) with ``use_thumbnail``; see the module docstring."""


class InternVLChatImageProcessorPil(_ThumbnailSwitchMixin, GotOcr2ImageProcessorPil):
    r"""``GotOcr2ImageProcessorPil`` (PIL bicubic, the original's pixels) with ``use_thumbnail``; see the module
    docstring."""


__all__ = ["InternVLChatImageProcessor", "InternVLChatImageProcessorPil"]
