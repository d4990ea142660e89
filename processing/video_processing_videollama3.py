"""VideoLLaMA3 video preprocessing exactly as the original release does it (``Videollama3ImageProcessor`` on the
frames of a video): the frame size budget and PIL bicubic resampling of the original, on top of transformers'
``VideoLlama3VideoProcessor`` (patchify, DiffFP compression mask and outputs unchanged).

transformers' processor differs from the original in two places, both visible on frames whose sides are not
multiples of ``patch_size * merge_size``:

- it resizes with torchvision (bicubic on tensors), up to 2 grey levels away from PIL's bicubic, which also moves
  the DiffFP keep-mask (its threshold is 0.1 grey level);
- its ``smart_resize`` applies the minimum budget only when the maximum one did not apply (``elif``), and keeps each
  side at least one factor. The original (``simple_batched_resize``) checks the maximum budget
  (``max_tokens // frames``) and then, independently, the minimum one (``min_tokens``): with more frames than
  ``max_tokens / min_tokens`` the minimum wins.

One difference is kept on purpose: the original divides ``max_tokens`` by the frames of *all* videos (and images)
passed in one call, so a video's size depends on what it is batched with; here each video gets the budget for its
own frame count (identical for one video per call, the original's inference path).
"""

import math

import numpy as np
import torch
from PIL import Image
from transformers import VideoLlama3VideoProcessor
from transformers.image_utils import PILImageResampling, SizeDict


def original_target_size(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) the original ``simple_batched_resize`` picks for one frame: sides rounded to multiples of
    ``factor`` (Python's round, ties to even), shrunk when the area exceeds ``max_pixels`` (already divided by the
    frame count), then grown when it is below ``min_pixels`` (this check runs after, and overrides, the first)."""
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar, w_bar = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    if h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    if h_bar == 0 or w_bar == 0:
        raise ValueError(f"a {height}x{width} frame resizes to {h_bar}x{w_bar} with factor {factor} and pixel budget "
                         f"[{min_pixels}, {max_pixels}]: expected both sides >= {factor} (raise min_tokens).")
    return h_bar, w_bar


class VideoLlama3PilVideoProcessor(VideoLlama3VideoProcessor):
    r"""
    ``VideoLlama3VideoProcessor`` with the original release's frame resize: target size from
    :func:`original_target_size` (token budget per frame = ``size["longest_edge"] // num_frames``, minimum
    ``size["shortest_edge"]``) and PIL bicubic resampling of uint8 frames (what the original image processor does),
    so pixel values and DiffFP masks equal the original's. Non-uint8 frames are resized with torchvision.

    Input / output: as ``VideoLlama3VideoProcessor`` (``pixel_values_videos`` (sum of T*h*w patches, C*p*p),
    ``video_grid_thw``, ``video_merge_sizes``, ``video_compression_mask``).
    """

    def resize(self, videos: torch.Tensor, size: SizeDict, resample, factor: int, **kwargs) -> torch.Tensor:
        """videos: (B, T, C, H, W) frames of one shape -> (B, T, C, H', W') at the original's target size."""
        if not size.shortest_edge or not size.longest_edge:
            raise ValueError(f"`size` must have 'shortest_edge' and 'longest_edge' (pixel budgets), got {size}.")
        height, width = videos.shape[-2:]
        target = original_target_size(height, width, factor, size.shortest_edge, size.longest_edge // videos.shape[1])
        if target == (height, width):
            return videos
        if videos.dtype != torch.uint8:
            return super(VideoLlama3VideoProcessor, self).resize(
                image=videos, size=SizeDict(height=target[0], width=target[1]), resample=resample)
        # the same filter in PIL's terms (`resample` may arrive as a torchvision InterpolationMode)
        pil_resample = PILImageResampling(resample) if isinstance(resample, int) else PILImageResampling[resample.name]
        frames = videos.reshape(-1, *videos.shape[-3:]).permute(0, 2, 3, 1).cpu().numpy()
        resized = [np.asarray(Image.fromarray(frame).resize(target[::-1], resample=pil_resample)) for frame in frames]
        resized = torch.from_numpy(np.stack(resized)).reshape(*videos.shape[:-3], *target, -1)
        return resized.permute(0, 1, 4, 2, 3).contiguous().to(videos.device)


__all__ = ["VideoLlama3PilVideoProcessor", "original_target_size"]
