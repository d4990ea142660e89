"""The ``video-tokenization`` pipeline: video file or frames -> tokens -> reconstructed frames (optionally an mp4).

```python
>>> pipe = pipeline("video-tokenization", model="path/to/converted-larp")
>>> out = pipe("clip.mp4", output_video_path="recon.mp4")
>>> out["tokens"], out["video"], out["video_path"]      # ids, list of PIL frames, the written mp4
```
"""

import numpy as np
from PIL import Image
from transformers import Pipeline

from ..registry import register_pipelines


def write_video(frames: np.ndarray, path: str, fps: float = 8.0, codec: str = "libx264") -> str:
    """Writes uint8 frames [T, H, W, 3] to ``path`` with PyAV (H.264 in yuv420p needs even sizes: odd sizes are
    written in yuv444p)."""
    import av
    from fractions import Fraction

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be a uint8 array [frames, height, width, 3], got {frames.dtype} {frames.shape}.")
    height, width = frames.shape[1:3]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return str(path)


def _is_frame(item) -> bool:
    return isinstance(item, Image.Image) or (hasattr(item, "ndim") and item.ndim == 3)


class _OneClip:
    """Frames that the pipeline must treat as one input (``Pipeline.__call__`` batches lists)."""

    def __init__(self, frames: list):
        self.frames = frames


class VideoTokenizationPipeline(Pipeline):
    """Encodes a clip with a vistok video tokenizer and decodes it back.

    Input: a path or URL of a video file (decoded with PyAV), a list of PIL frames, or a uint8 array [T, H, W, 3].
    Call arguments: ``decode_kwargs`` (dict passed to ``model.decode``), ``return_reconstruction`` (default True),
    ``output_video_path`` (also write the reconstruction there as an mp4) and ``fps`` (of that mp4, default 8).
    Models whose token count does not fix the clip length (``decode_takes_num_frames = True``, e.g. LARP) decode as
    many frames as the input had. Returns per clip: ``tokens`` (nested lists of ids in the model's token layout, or None for continuous
    tokenizers), ``latents`` (tensor), ``video`` (the reconstructed frames as PIL images) and ``video_path``.
    """

    _load_processor = False
    _load_image_processor = False
    _load_video_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False

    def __call__(self, videos, **kwargs):
        """``videos``: one clip (a path/URL, a list of PIL frames, a uint8 array [T, H, W, 3]) or a list of clips
        (paths, lists of frames or arrays); returns one result dict per clip."""
        if isinstance(videos, list) and videos and _is_frame(videos[0]):
            videos = _OneClip(videos)  # a list of frames is one clip, not a batch
        return super().__call__(videos, **kwargs)

    def _sanitize_parameters(
        self, decode_kwargs=None, return_reconstruction=None, output_video_path=None, fps=None, **kwargs
    ):
        forward_params = {"decode_kwargs": decode_kwargs or {}}
        if return_reconstruction is not None:
            forward_params["return_reconstruction"] = return_reconstruction
        postprocess_params = {"output_video_path": output_video_path, "fps": 8.0 if fps is None else fps}
        return {}, forward_params, postprocess_params

    def preprocess(self, video):
        if isinstance(video, _OneClip):
            video = video.frames
        inputs = self.video_processor(videos=[video], return_tensors="pt")
        return {"pixel_values": inputs["pixel_values_videos"].to(self.dtype or inputs["pixel_values_videos"].dtype)}

    def _forward(self, model_inputs, decode_kwargs=None, return_reconstruction=True):
        pixel_values = model_inputs["pixel_values"]
        encoded = self.model.encode(pixel_values)
        outputs = {"tokens": encoded.tokens, "latents": encoded.latents}
        if return_reconstruction:
            source = encoded.tokens if encoded.tokens is not None else encoded.latents
            kwargs = dict(decode_kwargs or {})
            if getattr(self.model, "decode_takes_num_frames", False):
                kwargs.setdefault("num_frames", pixel_values.shape[1])
            outputs["reconstruction"] = self.model.decode(source, **kwargs).reconstruction
        return outputs

    def postprocess(self, model_outputs, output_video_path=None, fps=8.0):
        tokens = model_outputs["tokens"]
        result = {
            "tokens": None if tokens is None else tokens[0].tolist(),
            "latents": model_outputs["latents"][0].float().cpu(),
        }
        if "reconstruction" in model_outputs:
            frames = self.video_processor.postprocess(model_outputs["reconstruction"], output_type="np")[0]
            result["video"] = self.video_processor.postprocess(model_outputs["reconstruction"])[0]
            if output_video_path is not None:
                result["video_path"] = write_video(frames, output_video_path, fps=fps)
        elif output_video_path is not None:
            raise ValueError("output_video_path needs the reconstruction (return_reconstruction=True).")
        return result


__all__ = ["VideoTokenizationPipeline", "write_video"]


register_pipelines()  # completes the registration if this module was imported before transformers.pipelines
