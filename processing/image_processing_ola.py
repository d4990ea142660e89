"""Ola image and video preprocessing (PIL, as the original `ola/mm_utils.py` with `inference/infer.py`'s settings).

Images give two views, both cut into packed 16x16 patches:
* high-res (`pixel_values`): native resolution; an image larger than `max_resolution`² pixels is first scaled down
  (sides floored to multiples of `stride`), otherwise it is centre-pasted on a gray (`pad_value`) canvas whose sides
  are rounded up to multiples of `stride`;
* low-res (`pixel_values_lowres`): made from that high-res image, rescaled to an area of about `lowres_size`² with
  sides floored to multiples of `stride` (PIL bicubic).

Video frames (`pixel_values_videos`) are resized like the high-res view but with `video_stride` and an area kept
within [`video_min_resolution`², `video_max_resolution`²]. Pixels are scaled to [0, 1] and normalised with mean = std
= 0.5 (the range [-1, 1]).
"""

import math

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor


def patchify(pixel_values: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """[C, H, W] -> ([h * w, C * p * p] row-major patches, (h, w)); H and W must be multiples of ``patch_size``."""
    channels, height, width = pixel_values.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"image sides {height}x{width} must be multiples of the patch size {patch_size}.")
    grid = (height // patch_size, width // patch_size)
    patches = pixel_values.reshape(channels, grid[0], patch_size, grid[1], patch_size).permute(1, 3, 0, 2, 4)
    return patches.reshape(grid[0] * grid[1], channels * patch_size**2), grid


def _to_pil(image) -> Image.Image:
    if isinstance(image, str):
        from transformers.image_utils import load_image

        image = load_image(image)
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.ndim != 3 or array.shape[-1] not in (1, 3):
        raise ValueError(f"expected an RGB image [H, W, 3] or [3, H, W], got shape {array.shape}.")
    if array.dtype != np.uint8:
        array = np.clip(np.round(array * 255.0 if array.max() <= 1.0 else array), 0, 255).astype(np.uint8)
    return Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).convert("RGB")


def _is_video(item) -> bool:
    return isinstance(item, str) or (isinstance(item, (np.ndarray, torch.Tensor)) and np.ndim(item) == 4)


def _scaled(image: Image.Image, scale: float, stride: int, keep_min: bool) -> Image.Image:
    width, height = image.size
    new_width, new_height = int(width * scale / stride) * stride, int(height * scale / stride) * stride
    if keep_min:
        new_width, new_height = max(new_width, stride), max(new_height, stride)
    return image.resize((new_width, new_height), Image.BICUBIC)


def resize_to_stride(
    image: Image.Image, stride: int, max_resolution: int, min_resolution: int, pad_value: int, keep_min: bool = True
) -> Image.Image:
    """Scales an image whose area is outside [min², max²] into it (sides floored to multiples of ``stride``);
    otherwise centre-pastes it on a ``pad_value`` canvas with sides rounded up to multiples of ``stride``."""
    width, height = image.size
    if width * height > max_resolution**2:
        return _scaled(image, math.sqrt(max_resolution**2 / (width * height)), stride, keep_min)
    if width * height < min_resolution**2:
        return _scaled(image, math.sqrt(min_resolution**2 / (width * height)), stride, keep_min)
    padded_width, padded_height = math.ceil(width / stride) * stride, math.ceil(height / stride) * stride
    canvas = Image.new("RGB", (padded_width, padded_height), (pad_value,) * 3)
    canvas.paste(image, ((padded_width - width) // 2, (padded_height - height) // 2))
    return canvas


class OlaImageProcessor(BaseImageProcessor):
    r"""
    Ola's image and video preprocessing (see the module docstring). Outputs packed patches:

    * images: `pixel_values` [total_patches, 3 * 16 * 16] + `image_grid_hw` [num_images, 2] (high-res view),
      `pixel_values_lowres` + `image_grid_hw_lowres` (low-res view);
    * videos (`preprocess_videos`): `pixel_values_videos` [total_patches, 768] + `video_grid_thw` [num_videos, 3].

    Args:
        patch_size (`int`): ViT patch size. stride (`int`): image sides become multiples of it (2 patches, so the 2x2
            pooling tiles the grid). lowres_size (`int`): side of the low-res view's target area.
        max_resolution / min_resolution (`int`): area bounds of the high-res view. pad_value (`int`): canvas gray.
        video_stride / video_max_resolution / video_min_resolution (`int`): the same for video frames.
        video_num_frames (`int`): frames sampled uniformly from a video file (64 in the original; a shorter video
            gives all its frames, where the original repeats frames).
        image_mean / image_std (`list[float]`): normalisation after scaling to [0, 1].
    """

    model_input_names = ["pixel_values", "image_grid_hw", "pixel_values_lowres", "image_grid_hw_lowres"]

    def __init__(
        self,
        patch_size: int = 16,
        stride: int = 32,
        lowres_size: int = 384,
        max_resolution: int = 1536,
        min_resolution: int = 0,
        pad_value: int = 127,
        video_stride: int = 64,
        video_max_resolution: int = 480,
        video_min_resolution: int = 288,
        video_num_frames: int = 64,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.stride = stride
        self.lowres_size = lowres_size
        self.max_resolution = max_resolution
        self.min_resolution = min_resolution
        self.pad_value = pad_value
        self.video_stride = video_stride
        self.video_max_resolution = video_max_resolution
        self.video_min_resolution = video_min_resolution
        self.video_num_frames = video_num_frames
        self.image_mean = list(image_mean) if image_mean is not None else [0.5, 0.5, 0.5]
        self.image_std = list(image_std) if image_std is not None else [0.5, 0.5, 0.5]

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> normalised [3, H, W] float32."""
        array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.image_mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.image_std, dtype=torch.float32)[:, None, None]
        return (array - mean) / std

    def views(self, image) -> tuple[Image.Image, Image.Image]:
        """(high-res view, low-res view) of one image, as PIL images."""
        highres = resize_to_stride(
            _to_pil(image), self.stride, self.max_resolution, self.min_resolution, self.pad_value
        )
        width, height = highres.size
        lowres = _scaled(highres, math.sqrt(self.lowres_size**2 / (width * height)), self.stride, keep_min=True)
        return highres, lowres

    def __call__(self, images=None, videos=None, **kwargs) -> BatchFeature:
        data = {}
        if images is not None:
            data.update(self.preprocess(images, **kwargs))
        if videos is not None:
            data.update(self.preprocess_videos(videos, **kwargs))
        return BatchFeature(data)

    def preprocess(self, images, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """One image or a list of images (PIL, [H, W, 3] arrays or [3, H, W] tensors)."""
        if isinstance(images, (Image.Image, np.ndarray, torch.Tensor, str)) and np.ndim(images) != 4:
            images = [images]
        # one list per prompt (as pipelines pass them) -> one flat list in prompt order
        images = [image for item in images for image in (item if isinstance(item, (list, tuple)) else [item])]
        high, low, high_grids, low_grids = [], [], [], []
        for image in images:
            highres, lowres = self.views(image)
            patches, grid = patchify(self.to_tensor(highres), self.patch_size)
            high.append(patches)
            high_grids.append(grid)
            patches, grid = patchify(self.to_tensor(lowres), self.patch_size)
            low.append(patches)
            low_grids.append(grid)
        return BatchFeature(
            {
                "pixel_values": torch.cat(high),
                "image_grid_hw": torch.tensor(high_grids, dtype=torch.long),
                "pixel_values_lowres": torch.cat(low),
                "image_grid_hw_lowres": torch.tensor(low_grids, dtype=torch.long),
            },
            tensor_type=return_tensors,
        )

    def preprocess_videos(self, videos, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """One video or a list of videos, each a file path (decoded with PyAV, `video_num_frames` frames), a list of
        frames or a [T, H, W, 3] array."""
        if isinstance(videos, str) or (isinstance(videos, (np.ndarray, torch.Tensor)) and np.ndim(videos) == 4):
            videos = [videos]
        elif videos and isinstance(videos[0], Image.Image):
            videos = [videos]
        # one list of videos per prompt (as pipelines pass them) -> one flat list in prompt order
        videos = [
            video for item in videos
            for video in (item if isinstance(item, (list, tuple)) and item and _is_video(item[0]) else [item])
        ]
        patches, grids = [], []
        for frames in videos:
            if isinstance(frames, str):
                frames = load_video(frames, self.video_num_frames)
            frames = [
                resize_to_stride(
                    _to_pil(frame), self.video_stride, self.video_max_resolution, self.video_min_resolution,
                    self.pad_value, keep_min=False,
                )
                for frame in frames
            ]
            per_frame = [patchify(self.to_tensor(frame), self.patch_size) for frame in frames]
            if len({grid for _, grid in per_frame}) != 1:
                raise ValueError(f"all frames of a video must have the same size, got {[f.size for f in frames]}.")
            patches += [p for p, _ in per_frame]
            grids.append((len(per_frame), *per_frame[0][1]))
        return BatchFeature(
            {"pixel_values_videos": torch.cat(patches), "video_grid_thw": torch.tensor(grids, dtype=torch.long)},
            tensor_type=return_tensors,
        )


def load_video(path: str, num_frames: int = 64) -> list[Image.Image]:
    """Decodes a video with PyAV and returns `num_frames` frames sampled uniformly (as the original,
    `np.linspace(0, total - 1, num_frames)` rounded down; all frames when the video has fewer), as PIL images."""
    import av

    with av.open(str(path)) as container:
        frames = [frame.to_image() for frame in container.decode(video=0)]
    if not frames:
        raise ValueError(f"no video frames could be decoded from {path}.")
    indices = np.linspace(0, len(frames) - 1, min(num_frames, len(frames)), dtype=int)
    return [frames[i] for i in indices]


__all__ = ["OlaImageProcessor", "load_video", "patchify"]
