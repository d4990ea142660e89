"""``vistok.evaluation``: PSNR/SSIM against analytic values and references, dataset loading errors, and the
``vistok-eval`` command end to end on tiny saved tokenizers and a generated image folder."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

import vistok  # noqa: F401
from testers import all_testers
from vistok.evaluation import (
    build_report,
    evaluate_reconstruction,
    find_image_column,
    load_image_dataset,
    main,
    make_grid,
    psnr,
    ssim,
)
from vistok.modeling.tokenizer_utils import TokenizerDecoderOutput, TokenizerEncoderOutput


TESTERS = {t.name: t for t in all_testers()}
# the CLI evaluates still images: testers with [C, H, W] inputs large enough for the 11x11 SSIM window
IMAGE_TESTERS = [t for t in TESTERS.values() if len(t.input_shape) == 3 and min(t.input_shape[1:]) >= 11]
SIZES = [(40, 48), (32, 32), (50, 36), (33, 64), (48, 40), (36, 36)]   # (width, height)


# ----------------------------------------------------------------------------------------------------------- metrics


def _pattern(height=24, width=20):
    """Deterministic smooth RGB image a and a perturbed copy b, [1, 3, H, W] float64 in [0, 1]."""
    i, j = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                          indexing="ij")
    a = torch.stack([0.5 + 0.4 * torch.sin(0.7 * i + 0.3 * j + c) for c in range(3)])
    b = torch.stack([(a[c] + 0.08 * torch.cos(1.3 * i * j / 7.0 + c)).clamp(0, 1) for c in range(3)])
    return a[None], b[None]


def _naive_ssim(x: np.ndarray, y: np.ndarray, size=11, sigma=1.5, c1=0.01**2, c2=0.03**2) -> float:
    """Textbook SSIM with explicit loops over every full window of [C, H, W] arrays."""
    g = np.exp(-((np.arange(size) - size // 2) ** 2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    per_channel = []
    for xc, yc in zip(x, y):
        values = []
        for r in range(xc.shape[0] - size + 1):
            for c in range(xc.shape[1] - size + 1):
                px, py = xc[r : r + size, c : c + size], yc[r : r + size, c : c + size]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cov = (w * (px - mx) * (py - my)).sum()
                values.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
        per_channel.append(np.mean(values))
    return float(np.mean(per_channel))


def test_psnr_identical_images_is_inf():
    images = torch.rand(2, 3, 16, 16)
    assert torch.isinf(psnr(images, images)).all()


def test_psnr_matches_analytic_noise_level():
    # torchmetrics converts to dB with a float32 log(10) (relative error ~5e-8): rtol 1e-7 instead of atol 1e-9
    target = torch.full((2, 3, 16, 16), 0.5, dtype=torch.float64)
    signs = torch.ones(16, 16, dtype=torch.float64)
    signs[::2, 1::2] = signs[1::2, ::2] = -1                       # checkerboard: |error| = d everywhere
    for d, expected in [(0.1, 20.0), (0.01, 40.0), (0.25, -20 * math.log10(0.25))]:
        values = psnr(target + d * signs, target)
        torch.testing.assert_close(values, torch.full((2,), expected, dtype=torch.float64), atol=0, rtol=1e-7)
    # data_range scales the peak: the same error on a 0..255 scale
    torch.testing.assert_close(psnr(255 * (target + 0.1 * signs), 255 * target, data_range=255.0),
                               torch.full((2,), 20.0, dtype=torch.float64), atol=0, rtol=1e-7)
    # gaussian noise: PSNR = -10 log10(measured MSE), per image
    std = torch.tensor([0.01, 0.05, 0.2], dtype=torch.float64).view(3, 1, 1, 1)
    noise = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * std
    expected = -10 * torch.log10(noise.pow(2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(psnr(0.5 + noise, torch.full_like(noise, 0.5)), expected, atol=0, rtol=1e-7)
    # and close to the population value -20 log10(std) (3072 samples: one standard error is ~0.11 dB)
    torch.testing.assert_close(expected, -20 * torch.log10(std.flatten()), atol=0.5, rtol=0)


def test_ssim_identical_images_is_one():
    images = torch.rand(3, 3, 20, 17, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ssim(images, images), torch.ones(3, dtype=torch.float64), atol=1e-12, rtol=0)


def test_ssim_of_constant_images_is_analytic():
    # no variance: SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b = 0.3, 0.7
    c1 = 0.01**2
    value = ssim(torch.full((1, 3, 12, 12), b, dtype=torch.float64), torch.full((1, 3, 12, 12), a, dtype=torch.float64))
    assert value.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-12)


def test_ssim_matches_naive_windowed_reference():
    a, b = _pattern(15, 14)
    assert ssim(b, a).item() == pytest.approx(_naive_ssim(b[0].numpy(), a[0].numpy()), abs=1e-12)


def test_ssim_matches_scikit_image_values():
    # golden values from scikit-image 0.26 structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    # use_sample_covariance=False, data_range=1.0, channel_axis=-1) on the same arrays ([H, W, C] layout)
    a, b = _pattern()
    assert ssim(a, b).item() == pytest.approx(0.9724062439503998, abs=1e-12)
    assert ssim(a, a * 0.6 + 0.1).item() == pytest.approx(0.8621052245734817, abs=1e-12)
    assert ssim(b, a).item() == pytest.approx(ssim(a, b).item(), abs=1e-15)   # symmetric


def test_ssim_matches_scikit_image_when_installed():
    metrics = pytest.importorskip("skimage.metrics")
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 30, 27, generator=generator, dtype=torch.float64)
    b = (a + 0.1 * torch.randn(2, 3, 30, 27, generator=generator, dtype=torch.float64)).clamp(0, 1)
    expected = [metrics.structural_similarity(x.permute(1, 2, 0).numpy(), y.permute(1, 2, 0).numpy(),
                                              gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                              data_range=1.0, channel_axis=-1) for x, y in zip(a, b)]
    torch.testing.assert_close(ssim(a, b), torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)


def test_metric_input_errors():
    with pytest.raises(ValueError, match=r"same shape, got \(1, 3, 16, 16\) and \(1, 3, 16, 15\)"):
        psnr(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 15))
    with pytest.raises(ValueError, match=r"\[batch, channels, height, width\], got \(3, 16, 16\)"):
        ssim(torch.rand(3, 16, 16), torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match=r"11x11 window needs images of at least that size, got 10x16"):
        ssim(torch.rand(1, 3, 10, 16), torch.rand(1, 3, 10, 16))


def test_make_grid_puts_originals_above_reconstructions():
    originals = torch.zeros(3, 3, 8, 6)
    reconstructions = torch.ones(3, 3, 8, 6)
    grid = np.asarray(make_grid(originals, reconstructions))
    assert grid.shape == (16, 18, 3)
    assert (grid[:8] == 0).all() and (grid[8:] == 255).all()


# -------------------------------------------------------------------------------------------------------------- data


def _write_images(folder, sizes=SIZES):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    for index, (width, height) in enumerate(sizes):
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 3.0 + index)], axis=-1)
        pixels = np.clip(base + 0.1 * rng.randn(height, width, 3), 0, 1)
        image = Image.fromarray((pixels * 255).astype(np.uint8))
        if index == 1:
            image = image.convert("L")        # grayscale and RGBA files are converted to RGB for the model
        elif index == 2:
            image = image.convert("RGBA")
        image.save(folder / f"img_{index}.png")
    return folder


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    return _write_images(tmp_path_factory.mktemp("images"))


def test_empty_folder_and_missing_paths_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no image files found in folder"):
        load_image_dataset(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="does not exist"):
        load_image_dataset(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="image folder or a Hub dataset id, got the file"):
        load_image_dataset(str(tmp_path / "empty" / "notes.txt"))
    with pytest.raises(ValueError, match="max_images must be a positive integer, got 0"):
        load_image_dataset(str(tmp_path), max_images=0)


def test_find_image_column():
    import datasets

    features = datasets.Features({"caption": datasets.Value("string"), "jpg": datasets.Image()})
    assert find_image_column(features) == "jpg"
    with pytest.raises(ValueError, match=r"no image column .* got columns \{'caption': 'Value'\}"):
        find_image_column(datasets.Features({"caption": datasets.Value("string")}))
    with pytest.raises(ValueError, match=r"image column 'png' not found; the dataset has columns \['caption', 'jpg'\]"):
        find_image_column(features, "png")


def test_load_image_folder(image_dir):
    dataset, column, split = load_image_dataset(str(image_dir), max_images=4)
    assert (column, split, len(dataset)) == ("image", "train", 4)
    with pytest.raises(ValueError, match="Unknown split"):
        load_image_dataset(str(image_dir), split="validation")


# ---------------------------------------------------------------------------------------------------------- CLI runs


def _save_tester(tester, folder):
    tester.make_model().save_pretrained(folder)
    tester.make_image_processor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def titok_dir(tmp_path_factory):
    return _save_tester(TESTERS["titok-vq"], tmp_path_factory.mktemp("titok-vq"))


def _direct_metrics(model_dir, image_dir):
    """Reconstruction metrics computed without vistok.evaluation: processor -> encode -> decode -> postprocess."""
    model = AutoModel.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    files = sorted(p.name for p in image_dir.iterdir())
    images = [Image.open(image_dir / name).convert("RGB") for name in files]
    pixel_values = processor(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        tokens = model.encode(pixel_values).tokens
        reconstruction = model.decode(tokens).reconstruction
    original = processor.postprocess(pixel_values, output_type="pt").double().numpy()
    reconstructed = processor.postprocess(reconstruction, output_type="pt").double().numpy()
    mse = ((original - reconstructed) ** 2).reshape(len(files), -1).mean(axis=1)
    # SSIM from the loop-based textbook reference above, not from vistok's own implementation
    return files, 10 * np.log10(1.0 / mse), np.array([_naive_ssim(r, o) for r, o in zip(reconstructed, original)])


def test_cli_report_grid_and_metrics(titok_dir, image_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main([str(titok_dir), str(image_dir), "--output-dir", str(out), "--batch-size", "4", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "PSNR (dB)" in printed and "tokens/image  8" in printed

    report = json.loads((out / "report.json").read_text())
    assert report["model"] == str(titok_dir) and report["model_type"] == "titok"
    assert (report["num_images"], report["tokens_per_image"], report["token_shape"]) == (6, 8, [8])
    assert report["image_size"] == [32, 32] and report["discrete"] is True and report["codebook_size"] == 64
    assert report["bits_per_image"] == 8 * 6 and report["split"] == "train"
    assert [item["file"] for item in report["images"]] == [f"img_{i}.png" for i in range(6)]

    files, expected_psnr, expected_ssim = _direct_metrics(titok_dir, image_dir)
    by_file = {item["file"]: item for item in report["images"]}
    np.testing.assert_allclose([by_file[f]["psnr"] for f in files], expected_psnr, rtol=1e-5)
    np.testing.assert_allclose([by_file[f]["ssim"] for f in files], expected_ssim, rtol=1e-5, atol=1e-6)
    assert report["mean_psnr"] == pytest.approx(float(np.mean(expected_psnr)), rel=1e-5)
    assert report["mean_ssim"] == pytest.approx(float(np.mean(expected_ssim)), rel=1e-5, abs=1e-6)

    grid = Image.open(out / "grid.png")
    assert grid.size == (6 * 32, 2 * 32) and grid.mode == "RGB"
    # top row: the preprocessed originals of the first images, in order
    processor = AutoImageProcessor.from_pretrained(titok_dir)
    first = processor.postprocess(processor(Image.open(image_dir / "img_0.png").convert("RGB"),
                                            return_tensors="pt")["pixel_values"], output_type="np")[0]
    assert np.abs(np.asarray(grid)[:32, :32].astype(int) - first.astype(int)).max() <= 1

    markdown = (out / "report.md").read_text()
    assert "![originals and reconstructions](grid.png)" in markdown
    assert f"{report['mean_psnr']:.2f}" in markdown and markdown.count("| img_") == 6


def test_cli_max_images_grid_limit_and_streaming(titok_dir, image_dir, tmp_path):
    out = tmp_path / "eval"
    args = [str(titok_dir), str(image_dir), "--output-dir", str(out), "--no-progress"]
    assert main(args + ["--max-images", "5", "--batch-size", "2", "--grid-images", "3"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["num_images"] == 5 and Image.open(out / "grid.png").size == (3 * 32, 64)
    full = {item["file"]: item["psnr"] for item in report["images"]}

    streamed = tmp_path / "streamed"
    args[3] = str(streamed)
    assert main(args + ["--max-images", "2", "--streaming", "--grid-images", "0"]) == 0
    report = json.loads((streamed / "report.json").read_text())
    assert report["num_images"] == 2 and not (streamed / "grid.png").exists()
    assert "grid.png" not in (streamed / "report.md").read_text()
    for item in report["images"]:
        assert item["psnr"] == pytest.approx(full[item["file"]], rel=1e-5)


def test_cli_errors_exit_2(titok_dir, image_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(titok_dir), str(empty), "--output-dir", str(tmp_path / "o")]) == 2
    assert "vistok-eval: error: no image files found in folder" in capsys.readouterr().err
    # decode arguments reach the model: TiTok refuses a 4-token prefix
    assert main([str(titok_dir), str(image_dir), "--output-dir", str(tmp_path / "o"), "--num-tokens", "4",
                 "--no-progress"]) == 2
    assert "expected 8 tokens per image, got 4" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(titok_dir), str(image_dir), "--decode-kwargs", "[1, 2]"])
    assert "expected a JSON object" in capsys.readouterr().err


@pytest.mark.parametrize("tester", IMAGE_TESTERS, ids=[t.name for t in IMAGE_TESTERS])
def test_every_image_tokenizer_evaluates(tester, image_dir, tmp_path):
    """Every tiny tokenizer runs through the evaluation; JSON decode kwargs go through the CLI, others (text guidance
    or noise tensors) through `evaluate_reconstruction` with the batch size they were made for."""
    model_dir = _save_tester(tester, tmp_path / "model")
    decode_kwargs = tester.make_decode_kwargs(3)
    try:
        json.dumps(decode_kwargs)
        through_cli = True
    except TypeError:
        through_cli = False
    if through_cli:
        out = tmp_path / "eval"
        argv = [str(model_dir), str(image_dir), "--output-dir", str(out), "--batch-size", "3", "--no-progress"]
        assert main(argv + (["--decode-kwargs", json.dumps(decode_kwargs)] if decode_kwargs else [])) == 0
        report = json.loads((out / "report.json").read_text())
        assert report["decode_kwargs"] == decode_kwargs
    else:
        dataset, column, _ = load_image_dataset(str(image_dir))
        model = AutoModel.from_pretrained(model_dir).eval()
        result = evaluate_reconstruction(model, AutoImageProcessor.from_pretrained(model_dir),
                                         [row[column] for row in dataset], batch_size=3, decode_kwargs=decode_kwargs,
                                         progress=False)
        report = build_report(result, str(model_dir), model)
    assert report["num_images"] == 6 and report["discrete"] == tester.discrete
    assert report["image_size"] == list(tester.input_shape[1:])
    if tester.num_tokens is not None:
        assert report["tokens_per_image"] == tester.num_tokens
    assert all(math.isfinite(item["psnr"]) and -1 <= item["ssim"] <= 1 for item in report["images"])


class _NoisyIdentityTokenizer(torch.nn.Module):
    """Continuous stand-in whose decoder adds seeded noise (like a stochastic flow decoder): latents are pixels."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.config = SimpleNamespace(num_channels=3, model_type="noisy")

    def encode(self, pixel_values):
        self.shape = pixel_values.shape
        return TokenizerEncoderOutput(latents=pixel_values.flatten(2).transpose(1, 2))   # [B, H*W, 3]

    def _decode(self, latents, noise_std=0.0, generator=None):
        images = (self.scale * latents).transpose(1, 2).reshape(self.shape)
        return images + noise_std * torch.randn(images.shape, generator=generator)

    def decode(self, latents, **kwargs):
        return TokenizerDecoderOutput(reconstruction=self._decode(latents, **kwargs))


def test_stochastic_decoders_are_seeded_and_exact_ones_report_inf(image_dir):
    images = [Image.open(p) for p in sorted(image_dir.iterdir())]
    processor = TESTERS["titok-vq"].make_image_processor()
    model = _NoisyIdentityTokenizer()

    exact = evaluate_reconstruction(model, processor, images, batch_size=4, progress=False)
    assert all(math.isinf(value) for value in exact.psnr) and exact.mean_ssim == pytest.approx(1.0, abs=1e-9)
    assert exact.tokens_per_image == 32 * 32 and exact.discrete is False
    report = build_report(exact, "noisy", model)
    assert report["mean_psnr"] is None and report["images"][0]["psnr"] is None   # strict JSON: no Infinity
    json.dumps(report, allow_nan=False)

    runs = [evaluate_reconstruction(model, processor, images, batch_size=4, decode_kwargs={"noise_std": 0.05},
                                    seed=seed, progress=False) for seed in (0, 0, 1)]
    assert runs[0].psnr == runs[1].psnr and runs[0].psnr != runs[2].psnr
    # clamping to [0, 1] removes part of the noise, so PSNR is at least the unclamped -20 log10(0.05) ~ 26 dB
    assert all(25.0 < value < 32.0 for value in runs[0].psnr)


@pytest.mark.skipif("flextok" not in TESTERS, reason="no FlexTok tester")
def test_cli_seeds_stochastic_decoder_and_decodes_prefixes(image_dir, tmp_path):
    """FlexTok's flow decoder draws noise: the CLI seeds it (same seed, same numbers; another seed, others), passes
    JSON decode arguments on, and `--num-tokens` decodes a prefix of the 1D token sequence."""
    model_dir = _save_tester(TESTERS["flextok"], tmp_path / "model")

    def run(*extra):
        out = tmp_path / f"eval{len(list(tmp_path.iterdir()))}"
        argv = [str(model_dir), str(image_dir), "--output-dir", str(out), "--max-images", "4", "--batch-size", "2",
                "--no-progress", "--decode-kwargs", '{"num_steps": 2, "guidance_scale": 1.0}', *extra]
        assert main(argv) == 0
        return json.loads((out / "report.json").read_text())

    first, again, other_seed = run(), run(), run("--seed", "1")
    assert [i["psnr"] for i in first["images"]] == [i["psnr"] for i in again["images"]]
    assert [i["psnr"] for i in first["images"]] != [i["psnr"] for i in other_seed["images"]]
    assert first["decode_kwargs"] == {"num_steps": 2, "guidance_scale": 1.0} and other_seed["seed"] == 1
    prefix = run("--num-tokens", "3")
    assert prefix["tokens_per_image"] == 3 and prefix["token_shape"] == [3]
    assert [i["psnr"] for i in prefix["images"]] != [i["psnr"] for i in first["images"]]
