"""LLaVA-Mini processors: CLIP image preprocessing (+ high-resolution crops), 1 frame/s video sampling, and a
`ProcessorMixin` that expands every image into C*C placeholders and every video into T*C*C.

The original prepares images with the slow (PIL) `CLIPImageProcessor`: `LlavaMiniImageProcessorPil` and the video
processor reproduce it exactly; `LlavaMiniImageProcessor` (torchvision backend) differs by up to ~0.015 per pixel
after normalisation (a different bicubic kernel).
"""

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BatchFeature, CLIPImageProcessor, CLIPImageProcessorPil, ProcessorMixin
from transformers.image_transforms import to_pil_image
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling, make_flat_list_of_images
from transformers.processing_utils import ImagesKwargs, VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoMetadata

from .chat_templates import LLAVA_MINI_CHAT_TEMPLATE


def split_image(image: Image.Image, ratio: int) -> list[Image.Image]:
    """High-resolution views as in the original: `ratio` x `ratio` crops (row-major, integer boxes of
    `width // ratio` x `height // ratio`) followed by the whole image."""
    if ratio == 1:
        return [image]
    width, height = image.size
    crop_w, crop_h = width // ratio, height // ratio
    crops = [
        image.crop((col * crop_w, row * crop_h, (col + 1) * crop_w, (row + 1) * crop_h))
        for row in range(ratio)
        for col in range(ratio)
    ]
    return crops + [image]


def one_frame_per_second(
    metadata: VideoMetadata, fps: float = 1.0, num_frames: int | None = None, **kwargs
) -> np.ndarray:
    """The original's frame choice: `int(total / video_fps * fps)` frames (at least 1), each the middle of one of equal
    segments of `[0, total - 1]` (numpy rounding of the segment bounds). Frames whose fps is unknown (arrays passed
    without `video_metadata`) are taken as already sampled: all of them are kept."""
    total = metadata.total_num_frames
    if num_frames is None:
        if not metadata.fps:
            return np.arange(total)
        num_frames = int(total / metadata.fps * fps)
    num_frames = max(1, min(total, num_frames))
    segment = (total - 1) / num_frames
    bounds = [(int(np.round(segment * i)), int(np.round(segment * (i + 1)))) for i in range(num_frames)]
    return np.array([(start + end) // 2 for start, end in bounds])


def expand_to_square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """The `image_aspect_ratio: "pad"` view: `image` pasted on a square canvas of its longer side, filled with `fill`,
    at offset ((side - width) // 2, (side - height) // 2). Square images are returned as they are."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


class LlavaMiniImagesKwargs(ImagesKwargs, total=False):
    """resolution_ratio: N; N > 1 returns N*N crops + the whole image per image. pad_to_square: pad every view to a
    square of the mean colour before the CLIP resize (the original's `image_aspect_ratio: "pad"`)."""

    resolution_ratio: int
    pad_to_square: bool


class _HighResolutionMixin:
    """Adds LLaVA-Mini's views: with `resolution_ratio` N > 1 each image becomes N*N crops plus the whole image, each
    preprocessed like an image, so `pixel_values` is [num_images, N*N + 1, 3, S, S]; with `pad_to_square` each view
    is first padded to a square filled with `int(255 * image_mean)` (as the original's `process_images` with
    `image_aspect_ratio: "pad"`, which pads every view it is given)."""

    resolution_ratio = 1
    pad_to_square = False
    valid_kwargs = LlavaMiniImagesKwargs
    model_input_names = ["pixel_values"]

    def preprocess(self, images, *args, **kwargs):
        ratio = kwargs.pop("resolution_ratio", None) or self.resolution_ratio
        pad = kwargs.pop("pad_to_square", None)
        pad = self.pad_to_square if pad is None else pad
        if ratio == 1 and not pad:
            return super().preprocess(images, *args, **kwargs)
        flat = make_flat_list_of_images(images)
        views = [view for image in flat for view in split_image(_as_pil(image), ratio)]
        if pad:
            fill = tuple(int(x * 255) for x in kwargs.get("image_mean") or self.image_mean)
            views = [expand_to_square(view, fill) for view in views]
        outputs = super().preprocess(views, *args, **kwargs)
        if ratio == 1:
            return outputs
        pixel_values = outputs["pixel_values"]
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = np.stack([np.asarray(p) for p in pixel_values])
        outputs["pixel_values"] = pixel_values.reshape(len(flat), ratio * ratio + 1, *pixel_values.shape[1:])
        return outputs


def _as_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return to_pil_image(image)


_CLIP_336 = dict(
    size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, image_mean=OPENAI_CLIP_MEAN,
    image_std=OPENAI_CLIP_STD,
)


class LlavaMiniImageProcessor(_HighResolutionMixin, CLIPImageProcessor):
    r"""CLIP preprocessing (torchvision backend): bicubic resize of the shorter side to 336, center crop 336, /255,
    CLIP mean/std; `resolution_ratio` N > 1 adds the high-resolution crops. Use `LlavaMiniImageProcessorPil` (or
    `AutoImageProcessor.from_pretrained(..., backend="pil")`) for pixels identical to the original."""

    size = _CLIP_336["size"]
    crop_size = _CLIP_336["crop_size"]


class LlavaMiniImageProcessorPil(_HighResolutionMixin, CLIPImageProcessorPil):
    r"""CLIP preprocessing with PIL, identical to the original's `CLIPImageProcessor`; see `LlavaMiniImageProcessor`."""

    size = _CLIP_336["size"]
    crop_size = _CLIP_336["crop_size"]


class LlavaMiniVideosKwargs(VideosKwargs, total=False):
    resolution_ratio: int


class LlavaMiniVideoProcessor(BaseVideoProcessor):
    r"""Videos as the original reads them: 1 frame per second (`fps`, segment middles), every frame resized to the
    crop size with nearest-neighbour interpolation, split into high-resolution views when `resolution_ratio` > 1,
    then the (PIL) CLIP preprocessing of each view. `pixel_values_videos`: [num_videos, T, 3, S, S] (or
    [num_videos, T, N*N + 1, 3, S, S]); a list when the videos have different frame counts."""

    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    size = _CLIP_336["size"]
    crop_size = _CLIP_336["crop_size"]
    default_to_square = False
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    do_sample_frames = True
    fps = 1
    resolution_ratio = 1
    valid_kwargs = LlavaMiniVideosKwargs
    model_input_names = ["pixel_values_videos"]

    def sample_frames(self, metadata: VideoMetadata, num_frames=None, fps=None, **kwargs) -> np.ndarray:
        return one_frame_per_second(metadata, fps=fps or self.fps, num_frames=num_frames)

    def _decode_and_sample_videos(self, videos, video_metadata, do_sample_frames=None, sample_indices_fn=None):
        videos, video_metadata = super()._decode_and_sample_videos(
            videos, video_metadata, do_sample_frames=do_sample_frames, sample_indices_fn=sample_indices_fn
        )
        # decoders return each sampled frame once; the original's indices may repeat a frame (decord keeps repeats)
        restored = []
        for video, metadata in zip(videos, video_metadata):
            indices = getattr(metadata, "frames_indices", None)
            if indices is not None:
                unique, inverse = np.unique(np.asarray(indices), return_inverse=True)
                if len(unique) < len(indices) and len(video) == len(unique):
                    video = video[torch.from_numpy(inverse) if torch.is_tensor(video) else inverse]
            restored.append(video)
        return restored, video_metadata

    def _frame_processor(
        self, size, crop_size, resample, image_mean, image_std, rescale_factor
    ) -> CLIPImageProcessorPil:
        return CLIPImageProcessorPil(
            size={"shortest_edge": size.shortest_edge} if size.shortest_edge else dict(size.items()),
            crop_size={"height": crop_size.height, "width": crop_size.width},
            resample=resample, image_mean=image_mean, image_std=image_std, rescale_factor=rescale_factor,
        )

    def _preprocess(self, videos: list[torch.Tensor], size, crop_size, resample, image_mean, image_std,
                    rescale_factor, resolution_ratio=None, return_tensors=None, **kwargs):
        ratio = resolution_ratio or self.resolution_ratio
        if isinstance(resample, int) or not hasattr(resample, "value"):
            resample = PILImageResampling(resample) if resample is not None else self.resample
        frame_processor = self._frame_processor(size, crop_size, resample, image_mean, image_std, rescale_factor)
        target = (crop_size.height, crop_size.width)
        outputs = []
        for video in videos:  # [T, 3, H, W] uint8
            if tuple(video.shape[-2:]) != target:
                video = F.interpolate(video.float(), size=target).to(torch.uint8)  # nearest, as the original
            frames = [Image.fromarray(frame.permute(1, 2, 0).cpu().numpy()) for frame in video]
            views = [view for frame in frames for view in split_image(frame, ratio)]
            pixels = frame_processor(views, return_tensors="pt")["pixel_values"]
            if ratio > 1:
                pixels = pixels.view(len(frames), ratio * ratio + 1, *pixels.shape[1:])
            outputs.append(pixels)
        if len({tuple(p.shape) for p in outputs}) == 1:
            outputs = torch.stack(outputs)
        return BatchFeature({"pixel_values_videos": outputs})


class LlavaMiniProcessor(ProcessorMixin):
    r"""LLaVA-Mini processor: `LlavaMiniImageProcessor(Pil)` + `LlavaMiniVideoProcessor` + the tokenizer.

    Besides the tokenizer's outputs and the pixel values it returns `fusion_mask` (see `__call__`). Each `<image>` in
    the text becomes `num_vision_tokens` (C*C) image placeholders, each `<video>` T*C*C video
    placeholders (T = sampled frames). The chat template renders the Llama-3.1 format of the release.

    Args:
        image_processor, video_processor, tokenizer: the sub-processors.
        num_vision_tokens (`int`): C*C of the model (`config.num_vision_tokens`).
        chat_template (`str`, *optional*): defaults to the Llama-3.1 LLaVA-Mini template.
    """

    def __init__(self, image_processor=None, video_processor=None, tokenizer=None, num_vision_tokens: int = 1,
                 chat_template: str | None = None, **kwargs):
        self.num_vision_tokens = num_vision_tokens
        self.image_token = getattr(tokenizer, "image_token", None) or "<image>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<video>"
        super().__init__(image_processor, video_processor, tokenizer,
                         chat_template=LLAVA_MINI_CHAT_TEMPLATE if chat_template is None else chat_template, **kwargs)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = self.tokenizer.convert_tokens_to_ids(self.video_token)

    def __call__(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """As `ProcessorMixin.__call__`, plus `fusion_mask` (a copy of the prompt's attention mask): the tokens the
        model fuses with the images; tokens appended later (generated ones) are not fused, as in the original."""
        outputs = super().__call__(images=images, text=text, videos=videos, audio=audio, **kwargs)
        if "attention_mask" in outputs:
            mask = outputs["attention_mask"]
            outputs["fusion_mask"] = mask.clone() if hasattr(mask, "clone") else [list(row) for row in mask]
        return outputs

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * self.num_vision_tokens

    def replace_video_token(self, video_inputs: dict, video_idx: int, **kwargs) -> str:
        num_frames = len(video_inputs["pixel_values_videos"][video_idx])
        return self.video_token * (num_frames * self.num_vision_tokens)


__all__ = [
    "LlavaMiniImageProcessor",
    "LlavaMiniImageProcessorPil",
    "LlavaMiniProcessor",
    "LlavaMiniVideoProcessor",
    "one_frame_per_second",
    "split_image",
]
