"""LARP video processor: clips of `num_frames` consecutive frames, shorter side resized to 128 and center cropped,
scaled to [0, 1] (no mean/std), as `pixel_values_videos` [B, T, 3, H, W]; `postprocess` turns reconstructions back
into frames. Video files are decoded with PyAV (transformers 5.x only decodes through torchcodec, which needs system
FFmpeg libraries; PyAV wheels bundle them)."""

import numpy as np
import torch
from PIL import Image
from transformers.image_utils import PILImageResampling
from transformers.utils import is_torchcodec_available
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoMetadata, load_video


class LARPVideoProcessor(BaseVideoProcessor):
    r"""
    Preprocessing of the LARP tokenizers (the original evaluation transform): take `num_frames` (16) consecutive frames
    from the start of the clip (the last frame is repeated when the clip is shorter), resize the shorter side to
    `size["shortest_edge"]` (128, bilinear with antialiasing), center crop `crop_size` (128x128), scale to **[0, 1]**.
    Output `pixel_values_videos`: [B, num_frames, 3, 128, 128].

    Accepts uint8 arrays / tensors [T, H, W, 3] (or [T, 3, H, W]), lists of PIL frames, and paths or URLs of video
    files (decoded with PyAV unless torchcodec is usable).
    """

    resample = PILImageResampling.BILINEAR
    size = {"shortest_edge": 128}
    crop_size = {"height": 128, "width": 128}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = False
    image_mean = [0.0, 0.0, 0.0]
    image_std = [1.0, 1.0, 1.0]
    do_convert_rgb = True
    do_sample_frames = True
    num_frames = 16
    model_input_names = ["pixel_values_videos"]

    def sample_frames(self, metadata: VideoMetadata, num_frames: int | None = None, fps=None, **kwargs) -> np.ndarray:
        """Indices of the first `num_frames` frames; the last frame is repeated for shorter clips."""
        if fps is not None:
            raise ValueError("LARPVideoProcessor takes consecutive frames at the native frame rate; `fps` is not used.")
        num_frames = self.num_frames if num_frames is None else num_frames
        total = metadata.total_num_frames
        if not total:
            raise ValueError("cannot sample frames from an empty video.")
        return np.minimum(np.arange(num_frames), total - 1)

    def fetch_videos(self, video_url_or_urls, sample_indices_fn=None):
        if is_torchcodec_available():
            return super().fetch_videos(video_url_or_urls, sample_indices_fn=sample_indices_fn)
        if isinstance(video_url_or_urls, list):
            return list(zip(*[self.fetch_videos(x, sample_indices_fn=sample_indices_fn) for x in video_url_or_urls]))
        return load_video(video_url_or_urls, backend="pyav", sample_indices_fn=sample_indices_fn)

    def postprocess(self, reconstruction, output_type: str = "pil"):
        """`reconstruction` [B, T, C, H, W] (or [T, C, H, W]) in [0, 1] -> per clip a list of PIL frames
        (`output_type="pil"`), a uint8 array [B, T, H, W, C] (`"np"`) or a float tensor clamped to [0, 1] (`"pt"`)."""
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}.")
        videos = torch.as_tensor(reconstruction).detach().float().cpu()
        if videos.ndim == 4:
            videos = videos[None]
        if videos.ndim != 5:
            raise ValueError(
                f"reconstruction must have shape [batch, frames, channels, height, width], got {tuple(videos.shape)}."
            )
        videos = videos.clamp(0.0, 1.0)
        if output_type == "pt":
            return videos
        array = (videos * 255.0).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
        if output_type == "np":
            return array
        return [[Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame) for frame in clip] for clip in array]


__all__ = ["LARPVideoProcessor"]
