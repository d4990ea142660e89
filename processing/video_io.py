"""Video file decoding that works without torchcodec.

transformers 5.24's ``BaseVideoProcessor.fetch_videos`` (used when a processor or the ``image-text-to-text``
pipeline receives a video *path or URL*) decodes with torchcodec only: ``torchvision.io.read_video`` was removed in
torchvision 0.26, and torchcodec needs system FFmpeg libraries. Without them every video path fails with an
``ImportError``. PyAV wheels bundle FFmpeg, and transformers' own ``load_video`` supports ``backend="pyav"``, so
``install_pyav_fallback`` makes ``fetch_videos`` fall back to PyAV when torchcodec cannot be used; nothing changes when
it can. ``av`` is imported only when a video is actually decoded.
"""

from transformers.video_processing_utils import BaseVideoProcessor


def _fetch_videos_with_pyav_fallback(self, video_url_or_urls, sample_indices_fn=None):
    from transformers.utils.import_utils import is_torchcodec_usable

    if is_torchcodec_usable(decode="video"):
        return _ORIGINAL_FETCH_VIDEOS(self, video_url_or_urls, sample_indices_fn=sample_indices_fn)
    from transformers.video_utils import load_video

    if isinstance(video_url_or_urls, list):
        return list(zip(*[self.fetch_videos(x, sample_indices_fn=sample_indices_fn) for x in video_url_or_urls]))
    return load_video(video_url_or_urls, backend="pyav", sample_indices_fn=sample_indices_fn)


_ORIGINAL_FETCH_VIDEOS = BaseVideoProcessor.fetch_videos


def install_pyav_fallback() -> None:
    """Makes every video processor decode video files with PyAV when torchcodec is unusable (idempotent)."""
    BaseVideoProcessor.fetch_videos = _fetch_videos_with_pyav_fallback
