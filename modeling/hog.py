"""Histogram-of-oriented-gradients targets for masked feature prediction (MaskFeat style, as used by MAETok).

Per colour channel: Sobel gradients (reflect padding), orientation histograms with `num_bins` bins over
`cell_size` x `cell_size` cells, weighted by magnitude times a tiled Gaussian window, each cell's histogram
l2-normalised. The cells of each patch are then gathered into one feature vector per patch.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def _gaussian_window(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[size, size] separable Gaussian (std = size // 2, centred between the middle pixels), summing to 1."""
    offsets = torch.arange(size, dtype=dtype, device=device)
    offsets = (offsets - offsets.mean()) / (size // 2)
    window = torch.exp(-0.5 * offsets**2)
    window = window[:, None] * window[None, :]
    return window / window.sum()


class HOGFeatures(nn.Module):
    """Parameter-free HOG feature extractor.

    Args:
        num_bins: orientation bins over the full circle (signed gradients folded by `floor(angle) % num_bins`).
        cell_size: side of a histogram cell in pixels.
        gaussian_window: side of the Gaussian weighting window, tiled over the image (0 disables it).
    """

    def __init__(self, num_bins: int = 9, cell_size: int = 8, gaussian_window: int = 16):
        super().__init__()
        self.num_bins = num_bins
        self.cell_size = cell_size
        self.gaussian_window = gaussian_window

    def feature_dim(self, num_channels: int, patch_size: int) -> int:
        return num_channels * self.num_bins * (patch_size // self.cell_size) ** 2

    def cell_histograms(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] -> l2-normalised histograms [B, C, num_bins, H / cell_size, W / cell_size] (float32)."""
        batch_size, channels, height, width = images.shape
        if height % self.cell_size or width % self.cell_size:
            raise ValueError(f"image size {height}x{width} must be divisible by the HOG cell size {self.cell_size}.")
        images = images.float()
        sobel = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], device=images.device)
        kernel_x = sobel.expand(channels, 1, 3, 3)
        kernel_y = sobel.t().expand(channels, 1, 3, 3)
        padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
        grad_x = F.conv2d(padded, kernel_x, groups=channels)
        grad_y = F.conv2d(padded, kernel_y, groups=channels)
        magnitude = torch.sqrt(grad_x**2 + grad_y**2)
        # the angle is measured from the y axis, then scaled so one bin is pi / num_bins wide
        phase = torch.atan2(grad_x, grad_y) / math.pi * self.num_bins
        if self.gaussian_window:
            window = self.gaussian_window
            if height % window or width % window:
                raise ValueError(f"image size {height}x{width} must be divisible by the HOG Gaussian window {window}.")
            weights = _gaussian_window(window, torch.float32, images.device).repeat(height // window, width // window)
            magnitude = magnitude * weights
        bins = torch.floor(phase).long() % self.num_bins
        histograms = torch.zeros(batch_size, channels, self.num_bins, height, width, device=images.device)
        histograms.scatter_add_(2, bins[:, :, None], magnitude[:, :, None])
        cell = self.cell_size
        histograms = histograms.unflatten(4, (width // cell, cell)).unflatten(3, (height // cell, cell))
        histograms = histograms.sum(dim=(4, 6))
        return F.normalize(histograms, p=2, dim=2)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, patch_size: int) -> torch.Tensor:
        """images [B, C, H, W] -> per-patch features [B, (H / patch_size) * (W / patch_size), C * num_bins * k * k]
        with k = patch_size / cell_size; within a patch the layout is (channel, bin, cell row, cell column)."""
        if patch_size % self.cell_size:
            raise ValueError(f"patch size {patch_size} must be a multiple of the HOG cell size {self.cell_size}.")
        histograms = self.cell_histograms(images)
        batch_size, channels, num_bins, cells_h, cells_w = histograms.shape
        k = patch_size // self.cell_size
        features = histograms.reshape(batch_size, channels * num_bins, cells_h // k, k, cells_w // k, k)
        features = features.permute(0, 2, 4, 1, 3, 5)
        return features.reshape(batch_size, (cells_h // k) * (cells_w // k), channels * num_bins * k * k)
