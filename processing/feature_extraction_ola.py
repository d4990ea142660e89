"""Ola audio features: Whisper log-mel spectrograms and BEATs Kaldi filterbanks of full 30 s windows.

Ola encodes every audio clip in 30 s windows (at most 25): each window, the last one zero-padded, goes through the
Whisper encoder (128-bin log-mel, `WhisperFeatureExtractor`) and through BEATs, which consumes a Kaldi-compatible
log-mel filterbank computed here in torch (no torchaudio).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BatchFeature, WhisperFeatureExtractor


def _mel_scale(freq: torch.Tensor | float) -> torch.Tensor | float:
    if isinstance(freq, torch.Tensor):
        return 1127.0 * torch.log1p(freq / 700.0)
    return 1127.0 * math.log1p(freq / 700.0)


def kaldi_mel_banks(num_bins: int, fft_size: int, sample_rate: float, low_freq: float, high_freq: float) -> torch.Tensor:
    """Kaldi's triangular mel filters (no VTLN warping): [num_bins, fft_size // 2 + 1] (last column zero)."""
    if high_freq <= 0.0:
        high_freq += sample_rate / 2
    mel_low, mel_high = _mel_scale(low_freq), _mel_scale(high_freq)
    mel_delta = (mel_high - mel_low) / (num_bins + 1)
    bins = torch.arange(num_bins, dtype=torch.float32)[:, None]
    left, center, right = mel_low + bins * mel_delta, mel_low + (bins + 1) * mel_delta, mel_low + (bins + 2) * mel_delta
    mel = _mel_scale(sample_rate / fft_size * torch.arange(fft_size // 2, dtype=torch.float32))[None, :]
    up_slope = (mel - left) / (center - left)
    down_slope = (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up_slope, down_slope), min=0.0)
    return F.pad(banks, (0, 1))


def kaldi_fbank(
    waveform: torch.Tensor,
    num_mel_bins: int = 128,
    sample_rate: int = 16000,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    preemphasis: float = 0.97,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
) -> torch.Tensor:
    """Log-mel filterbank with Kaldi's defaults (as `torchaudio.compliance.kaldi.fbank`): frames that fit entirely
    (`snip_edges`), DC offset removed, pre-emphasis, povey window, FFT padded to a power of two, power spectrum,
    no dither, natural log floored at float32 epsilon.

    Args:
        waveform: [num_samples] float tensor (Kaldi's scale, i.e. 16-bit integer range).
    Returns:
        [num_frames, num_mel_bins] float32, ``num_frames = 1 + (num_samples - window) // shift``.
    """
    waveform = torch.as_tensor(waveform, dtype=torch.float32).reshape(-1)
    window_size = int(sample_rate * frame_length_ms / 1000)
    window_shift = int(sample_rate * frame_shift_ms / 1000)
    if waveform.numel() < window_size:
        raise ValueError(f"need at least {window_size} samples for one filterbank frame, got {waveform.numel()}.")
    fft_size = 1 << (window_size - 1).bit_length()
    frames = waveform.unfold(0, window_size, window_shift)
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    frames = frames - preemphasis * previous
    window = torch.hann_window(window_size, periodic=False, dtype=torch.float32).pow(0.85)
    frames = F.pad(frames * window, (0, fft_size - window_size))
    power = torch.fft.rfft(frames).abs().pow(2)
    banks = kaldi_mel_banks(num_mel_bins, fft_size, sample_rate, low_freq, high_freq).to(torch.float32)
    energies = power @ banks.T
    return energies.clamp(min=torch.finfo(torch.float32).eps).log()


class OlaFeatureExtractor(WhisperFeatureExtractor):
    r"""
    Audio features of Ola. Each clip is cut into `chunk_length`-second windows (at most `max_chunks`; a clip shorter
    than one window gives one window), the last window zero-padded; every window yields

    * `input_features` [128, 3000]: Whisper log-mel spectrogram (`WhisperFeatureExtractor`, `feature_size=128`);
    * `beats_features` [2998, 128]: Kaldi filterbank of the window scaled to the 16-bit range, normalised as
      `(fbank - beats_fbank_mean) / (2 * beats_fbank_std)`.

    `audio_chunks` [num_clips] gives the number of windows per clip. The whole padded window is encoded (no length
    masking), as in the original.

    Args:
        max_chunks (`int`): most windows per clip (the original keeps the first 25).
        beats_num_mel_bins (`int`): BEATs filterbank bins. beats_fbank_mean / beats_fbank_std (`float`): its
            normalisation. Other arguments: `WhisperFeatureExtractor`.
    """

    model_input_names = ["input_features", "beats_features", "audio_chunks"]

    def __init__(
        self,
        feature_size: int = 128,
        max_chunks: int = 25,
        beats_num_mel_bins: int = 128,
        beats_fbank_mean: float = 15.41663,
        beats_fbank_std: float = 6.55582,
        **kwargs,
    ):
        super().__init__(feature_size=feature_size, **kwargs)
        self.max_chunks = max_chunks
        self.beats_num_mel_bins = beats_num_mel_bins
        self.beats_fbank_mean = beats_fbank_mean
        self.beats_fbank_std = beats_fbank_std

    def split_chunks(self, waveform: np.ndarray) -> list[np.ndarray]:
        """Cuts a mono clip into zero-padded full windows of `n_samples` samples (at most `max_chunks`)."""
        waveform = np.asarray(waveform, dtype=np.float32)
        if waveform.ndim != 1:
            raise ValueError(f"each audio clip must be a mono 1D waveform, got shape {waveform.shape}.")
        starts = range(0, max(len(waveform), 1), self.n_samples)
        chunks = [waveform[start : start + self.n_samples] for start in starts][: self.max_chunks]
        return [np.pad(chunk, (0, self.n_samples - len(chunk))) for chunk in chunks]

    def beats_fbank(self, chunk: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Normalised BEATs filterbank [frames, beats_num_mel_bins] of one window."""
        fbank = kaldi_fbank(torch.as_tensor(chunk, dtype=torch.float32) * 2**15, self.beats_num_mel_bins, self.sampling_rate)
        return (fbank - self.beats_fbank_mean) / (2 * self.beats_fbank_std)

    def __call__(self, raw_speech, sampling_rate: int | None = None, return_tensors: str | None = "pt", **kwargs):
        """``raw_speech``: one 1D waveform or a list of them, at `sampling_rate` (16 kHz)."""
        if sampling_rate is not None and sampling_rate != self.sampling_rate:
            raise ValueError(
                f"audio must be sampled at {self.sampling_rate} Hz, got {sampling_rate} Hz; resample it first."
            )
        if isinstance(raw_speech, (np.ndarray, torch.Tensor)) and np.asarray(raw_speech).ndim == 1:
            raw_speech = [raw_speech]
        clips = [self.split_chunks(np.asarray(clip)) for clip in raw_speech]
        chunks = [chunk for clip in clips for chunk in clip]
        mel = super().__call__(chunks, sampling_rate=self.sampling_rate, return_tensors="pt")["input_features"]
        beats = torch.stack([self.beats_fbank(chunk) for chunk in chunks])
        data = {
            "input_features": mel,
            "beats_features": beats,
            "audio_chunks": torch.tensor([len(clip) for clip in clips], dtype=torch.long),
        }
        return BatchFeature(data, tensor_type=return_tensors)


__all__ = ["OlaFeatureExtractor", "kaldi_fbank"]
