"""Reconstruction metrics of the tokenizer papers, computed with torchmetrics: PSNR, SSIM and LPIPS per image, rFID
over the whole set.

LPIPS and rFID need feature networks (AlexNet/VGG for LPIPS, InceptionV3 for FID) whose weights torchmetrics (and
torch-fidelity, for FID) fetch on first use: torchmetrics' wheel ships only LPIPS' linear heads; the AlexNet ImageNet
weights come from torchvision's download URL (``alexnet-owt-7be5be79.pth``) and the FID InceptionV3 from
torch-fidelity's GitHub release (``weights-inception-2015-12-05-6726825d.pth``), both cached in
``$TORCH_HOME/hub/checkpoints/`` (no PyPI wheel ships them; see the README). ``ReconstructionMetrics`` accepts replacements (``lpips_net``,
``fid_features``), so tests and offline users can inject small local networks.
"""

import torch


METRICS = ("psnr", "ssim", "lpips", "rfid")
DESCRIPTIONS = {
    "psnr": "dB, on RGB in [0, 1] (data range 1), per image, then averaged (torchmetrics)",
    "ssim": "Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, valid positions, mean over RGB, per image (torchmetrics)",
    "lpips": "LPIPS (torchmetrics, AlexNet features unless replaced), inputs in [0, 1], per image, then averaged",
    "rfid": "Frechet distance between InceptionV3 pool features (torchmetrics FID, unless replaced) of all originals "
            "and all reconstructions: one value for the set",
}


class ReconstructionMetrics:
    """Accumulates metrics over batches of ``reconstructed`` / ``original`` images ``[B, C, H, W]`` in ``[0, 1]``.

    Args:
        metrics: which of ``METRICS`` to compute (PSNR and SSIM always are: the report is built on them).
        lpips_net: module ``(a, b) -> [B, ...]`` distances for images in ``[-1, 1]``; default: torchmetrics' LPIPS
            AlexNet (weights fetched on first use).
        fid_features: module ``[B, 3, H, W]`` float images in ``[0, 1]`` -> ``[B, D]`` features for rFID; default: torchmetrics' InceptionV3
            (2048-d pool features, fetched on first use; needs ``torch-fidelity``).
        device: where the feature networks run.
    """

    def __init__(self, metrics=("psnr", "ssim"), lpips_net=None, fid_features=None, device="cpu"):
        unknown = set(metrics) - set(METRICS)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {list(METRICS)}.")
        self.metrics = ("psnr", "ssim") + tuple(name for name in metrics if name not in ("psnr", "ssim"))
        self.device = device
        self.per_image = {name: [] for name in self.metrics if name != "rfid"}
        self._lpips = None
        self._fid = None
        if "lpips" in self.metrics:
            if lpips_net is None:
                from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

                lpips_net = LearnedPerceptualImagePatchSimilarity(net_type="alex").net
            self._lpips = lpips_net.to(device).eval()
        if "rfid" in self.metrics:
            from torchmetrics.image.fid import FrechetInceptionDistance

            self._fid = FrechetInceptionDistance(feature=fid_features if fid_features is not None else 2048,
                                                 normalize=True).to(device)

    @torch.no_grad()
    def update(self, reconstructed: torch.Tensor, original: torch.Tensor) -> None:
        """Adds a batch: images ``[B, C, H, W]`` or clips ``[B, T, C, H, W]`` in ``[0, 1]``. A clip's PSNR comes from
        the MSE over all its frames; its SSIM and LPIPS are the means over its frames; rFID sees every frame."""
        from .evaluation import psnr, ssim

        if reconstructed.shape != original.shape or reconstructed.ndim not in (4, 5):
            raise ValueError(f"expected reconstructed and original of one shape [B, C, H, W] or [B, T, C, H, W], got "
                             f"{tuple(reconstructed.shape)} and {tuple(original.shape)}.")
        batch = len(original)
        frames = original.shape[1] if original.ndim == 5 else 1
        if "psnr" in self.per_image:  # [B, T * C, H, W]: one MSE over every frame of a clip
            self.per_image["psnr"].extend(psnr(reconstructed.flatten(1, -3), original.flatten(1, -3)).tolist())
        reconstructed = reconstructed.reshape(-1, *original.shape[-3:])
        original = original.reshape(-1, *original.shape[-3:])
        if "ssim" in self.per_image:
            self.per_image["ssim"].extend(ssim(reconstructed, original).view(batch, frames).mean(dim=1).tolist())
        reconstructed = reconstructed.float().clamp(0, 1).to(self.device)
        original = original.float().clamp(0, 1).to(self.device)
        if self._lpips is not None:
            distances = self._lpips(reconstructed * 2 - 1, original * 2 - 1)
            self.per_image["lpips"].extend(distances.reshape(batch, -1).mean(dim=1).tolist())
        if self._fid is not None:
            self._fid.update(original, real=True)
            self._fid.update(reconstructed, real=False)

    def rfid(self) -> float | None:
        """rFID over every image seen (None when not requested or with fewer than 2 images)."""
        if self._fid is None or self._fid.real_features_num_samples < 2:
            return None
        return float(self._fid.compute())


__all__ = ["DESCRIPTIONS", "METRICS", "ReconstructionMetrics"]
