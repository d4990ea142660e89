"""torchmetrics-backed LPIPS and rFID with injected local feature networks (nothing is downloaded); expected values
from the written-out formulas (LPIPS of the injected distance, Frechet distance with scipy's sqrtm)."""

import numpy as np
import pytest
import torch
from torch import nn

from vistok.evaluation import ReconstructionResult, build_report, format_markdown, format_table
from vistok.metrics import ReconstructionMetrics


class MeanAbsDistance(nn.Module):
    """A stand-in for LPIPS' network: mean |a - b| per image (inputs in [-1, 1])."""

    def forward(self, a, b):
        return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)


class ChannelStats(nn.Module):
    """A stand-in for InceptionV3: per-channel mean and std of images in [0, 1] -> [B, 6]."""

    def forward(self, images):
        x = images.double()
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def frechet(real: np.ndarray, fake: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def images(seed: int, n: int = 12, size=(3, 20, 28)) -> torch.Tensor:
    return torch.rand(n, *size, generator=torch.Generator().manual_seed(seed))


def test_lpips_and_rfid_with_injected_networks():
    pytest.importorskip("scipy")
    original = images(0)
    reconstructed = (original * 0.8 + 0.1 * images(1)).clamp(0, 1)
    metrics = ReconstructionMetrics(("lpips", "rfid"), lpips_net=MeanAbsDistance(), fid_features=ChannelStats())
    assert metrics.metrics == ("psnr", "ssim", "lpips", "rfid")
    for start in range(0, 12, 5):  # batches of 5, 5, 2: rFID is a set statistic over all of them
        metrics.update(reconstructed[start:start + 5], original[start:start + 5])

    expected_lpips = (2 * (reconstructed - original).abs()).mean(dim=(1, 2, 3))
    np.testing.assert_allclose(metrics.per_image["lpips"], expected_lpips.numpy(), rtol=1e-5)
    expected_fid = frechet(ChannelStats()(original).numpy(), ChannelStats()(reconstructed).numpy())
    assert metrics.rfid() == pytest.approx(expected_fid, rel=1e-3, abs=1e-6)
    assert len(metrics.per_image["psnr"]) == len(metrics.per_image["ssim"]) == 12

    same = ReconstructionMetrics(("rfid",), fid_features=ChannelStats())
    same.update(original, original)
    assert abs(same.rfid()) < 1e-6


def test_report_lists_lpips_and_rfid():
    result = ReconstructionResult(psnr=[20.0, 30.0], ssim=[0.5, 0.7], files=["a.png", "b.png"], tokens_per_image=4,
                                  token_shape=[4], discrete=True, image_size=(8, 8), lpips=[0.1, 0.3], rfid=12.5)
    report = build_report(result, "m")
    assert report["mean_lpips"] == pytest.approx(0.2) and report["rfid"] == 12.5
    assert [item["lpips"] for item in report["images"]] == [0.1, 0.3]
    assert "LPIPS" in format_table(report) and "rFID: 12.5000" in format_markdown(report)
    assert "rfid" not in build_report(ReconstructionResult(psnr=[1.0], ssim=[1.0], files=[None], image_size=(8, 8)),
                                      "m")


def test_unknown_metric_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown metrics \['fvd'\]"):
        ReconstructionMetrics(("fvd",))
