"""Video processor of the Emu3 vision tokenizer: PyAV decoding, frame sampling in groups of the temporal factor, the
original's smart resize and [-1, 1] normalisation, and `postprocess` of reconstructed clips.

The original release has no video processor: `autoencode.py` runs the image processor on a list of frames and stacks
them to [1, T, 3, H, W]. This processor does the same per frame (every frame of a clip gets the size that
`emu3_smart_resize` gives the clip's frame size) and returns `pixel_values_videos` [B, T, 3, H, W] in transformers'
video layout, which `Emu3VisionTokenizer.encode` takes as is.
"""

import numpy as np
import torch
from transformers.image_utils import PILImageResampling, SizeDict
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoMetadata, default_sample_indices_fn, load_video

from .image_processing_emu3 import pixel_budget, smart_or_fixed_size


class Emu3VideoProcessor(BaseVideoProcessor):
    r"""
    Emu3 video preprocessing: decode with PyAV (file paths/URLs), optionally sample frames (`do_sample_frames=True`
    with `num_frames` or `fps`; the count is rounded down to a multiple of `temporal_factor`, at least one group),
    smart resize to multiples of `spatial_factor` within `[min_pixels, max_pixels]` (bicubic; or a fixed
    `size={"height", "width"}`), rescale 1/255 and
    normalise with mean = std = 0.5 to **[-1, 1]**. Returns `pixel_values_videos` [B, T, 3, H, W].
    """

    resample = PILImageResampling.BICUBIC
    size = {"min_pixels": 512 * 512, "max_pixels": 1024 * 1024}
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    do_sample_frames = False
    spatial_factor = 8
    temporal_factor = 4
    model_input_names = ["pixel_values_videos"]

    def __init__(self, min_pixels: int | None = None, max_pixels: int | None = None, **kwargs):
        super().__init__(size=pixel_budget(kwargs.pop("size", None) or self.size, min_pixels, max_pixels), **kwargs)

    def sample_frames(self, metadata: VideoMetadata, num_frames: int | None = None, fps: float | None = None, **kwargs):
        """Uniformly sampled frame indices, `num_frames` of them or `fps` per second, rounded down to a multiple of
        `temporal_factor` (a clip shorter than one group keeps all its frames, and the model rejects it)."""
        num_frames = num_frames if num_frames is not None else self.num_frames
        fps = fps if fps is not None else self.fps
        if num_frames is None and fps is None:
            indices = np.arange(metadata.total_num_frames)
        else:
            indices = default_sample_indices_fn(metadata, num_frames=num_frames, fps=fps if num_frames is None else None)
        keep = len(indices) - len(indices) % self.temporal_factor
        return indices[:keep] if keep else indices

    def fetch_videos(self, video_url_or_urls, sample_indices_fn=None):
        # transformers 5.x defaults to torchcodec (needs system FFmpeg); PyAV is the dependable decoder here
        if isinstance(video_url_or_urls, list):
            return list(zip(*[self.fetch_videos(x, sample_indices_fn=sample_indices_fn) for x in video_url_or_urls]))
        return load_video(video_url_or_urls, backend="pyav", sample_indices_fn=sample_indices_fn)

    def resize(self, video: torch.Tensor, size: SizeDict, resample=None, **kwargs) -> torch.Tensor:
        height, width = video.shape[-2:]
        target = smart_or_fixed_size(height, width, size, self.spatial_factor)
        return super().resize(video, SizeDict(height=target[0], width=target[1]), resample=resample, **kwargs)

    def postprocess(self, reconstruction, output_type: str = "pil"):
        """Reconstructed clips [B, T, 3, H, W] in [-1, 1] -> per clip a list of PIL frames (`"pil"`), a uint8 array
        [B, T, H, W, 3] (`"np"`) or float tensors [B, T, 3, H, W] in [0, 1] (`"pt"`)."""
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}.")
        videos = torch.as_tensor(reconstruction).detach().float().cpu()
        if videos.ndim == 4:
            videos = videos[None]
        if videos.ndim != 5:
            raise ValueError(f"reconstruction must have shape [batch, frames, channels, height, width], got "
                             f"{tuple(videos.shape)}.")
        mean = torch.tensor(self.image_mean, dtype=torch.float32).view(1, 1, -1, 1, 1)
        std = torch.tensor(self.image_std, dtype=torch.float32).view(1, 1, -1, 1, 1)
        videos = ((videos * std + mean) if self.do_normalize else videos).clamp(0.0, 1.0)
        if output_type == "pt":
            return videos
        array = (videos * 255.0).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
        if output_type == "np":
            return array
        from PIL import Image

        return [[Image.fromarray(frame) for frame in clip] for clip in array]


__all__ = ["Emu3VideoProcessor"]
