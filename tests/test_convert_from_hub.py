"""``vistok-convert ARCH <Hub repo id | variant name> DEST`` against the local ``FakeHub`` (no network).

Every parity case's ``original/`` folder is uploaded as a release repo (with extra files a converter must not
download), converted from the Hub, and must give byte-identical weights to converting the local folder (which the
parity tests check against the original code's outputs). FlexTok is also published the way it is released: the VAE
in a repo of its own that the tokenizer config names.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from huggingface_hub import HfApi
from safetensors.torch import load_file
from transformers import AutoModel

import vistok  # noqa: F401  (registers the Auto classes)
from hub_fixtures import fake_hub, hub_client  # noqa: F401  (pytest fixtures)
from vistok.conversion.__main__ import main as convert_main
from vistok.conversion.utils import ConversionError, HubFiles, hub_repo_id


ARCHS = ("titok", "maetok", "flextok")
# files a release may carry that no converter reads: they must not be downloaded
DECOYS = {"README.md": b"# release\n", "training_state.pt": b"\0" * 4096, "samples/grid.png": b"png"}


def parity_cases(parity_root: Path, arch: str) -> list[Path]:
    cases = sorted(p for p in (parity_root / arch).glob("*") if (p / "original").is_dir())
    if not cases:
        pytest.skip(f"no {arch} parity cases under {parity_root}")
    return cases


def publish(folder: Path, repo_id: str, extra: dict[str, bytes] = DECOYS) -> None:
    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=folder)
    for name, data in extra.items():
        api.upload_file(path_or_fileobj=data, path_in_repo=name, repo_id=repo_id)


def preset_args(case: Path) -> list[str]:
    return ["--preset-overrides", str(case / "presets.json")] if (case / "presets.json").is_file() else []


def convert(arch: str, source, dest: Path, case: Path) -> dict[str, torch.Tensor]:
    assert convert_main([arch, str(source), str(dest), *preset_args(case)]) == 0
    return load_file(dest / "model.safetensors")


def downloaded(hub, repo_id: str) -> set[str]:
    prefix = f"/{repo_id}/resolve/"
    return {path.split(prefix, 1)[1].split("/", 1)[1] for method, path, _ in hub.requests
            if method == "GET" and path.startswith(prefix)}


def assert_same_weights(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


@pytest.mark.parametrize("arch", ARCHS)
def test_convert_from_hub_repo_equals_local(arch, parity_root, hub_client, tmp_path):
    pytest.importorskip(f"vistok.conversion.convert_{arch}")
    for case in parity_cases(parity_root, arch):
        repo_id = f"vistok-tests/{arch}-{case.name}-release"
        publish(case / "original", repo_id)
        local = convert(arch, case / "original", tmp_path / case.name / "local", case)
        from_hub = convert(arch, repo_id, tmp_path / case.name / "hub", case)
        assert_same_weights(from_hub, local)
        released = {p.relative_to(case / "original").as_posix() for p in (case / "original").rglob("*") if p.is_file()}
        needed = {n for n in released if not n.endswith((".md", ".yaml"))} | (
            {n for n in released if n.endswith(".yaml")} if "config.json" not in released else set())
        assert downloaded(hub_client.hub, repo_id) == needed, "downloaded files other than the converter's"
        config = json.loads((tmp_path / case.name / "hub" / "config.json").read_text())
        assert config["model_type"] == arch
    assert not hub_client.hub.unhandled


def test_flextok_vae_from_its_own_repo(parity_root, hub_client, tmp_path):
    """The released layout: the tokenizer repo has no VAE; `vae.hf_hub_path` names the VAE's own repo."""
    pytest.importorskip("vistok.conversion.convert_flextok")
    case = parity_cases(parity_root, "flextok")[0]
    release = tmp_path / "release"
    shutil.copytree(case / "original", release, ignore=shutil.ignore_patterns("vae"))
    config = json.loads((release / "config.json").read_text())
    config["vae"]["hf_hub_path"] = "vistok-tests/flextok_vae_tiny"
    (release / "config.json").write_text(json.dumps(config))
    publish(release, "vistok-tests/flextok-split-release")
    publish(case / "original" / "vae", "vistok-tests/flextok_vae_tiny", extra={"README.md": b"vae\n"})

    local = convert("flextok", case / "original", tmp_path / "local", case)
    from_hub = convert("flextok", "vistok-tests/flextok-split-release", tmp_path / "hub", case)
    assert_same_weights(from_hub, local)
    hub = hub_client.hub
    assert downloaded(hub, "vistok-tests/flextok_vae_tiny") == {"config.json", "diffusion_pytorch_model.safetensors"}
    assert downloaded(hub, "vistok-tests/flextok-split-release") == {"config.json", "model.safetensors"}
    model = AutoModel.from_pretrained(tmp_path / "hub")
    assert model.config.vae_config["latent_channels"] == config["vae"]["latent_channels"]


def test_convert_by_variant_name(parity_root, hub_client, tmp_path):
    """`titok-l32` resolves through TiTokConfig.variants to the release repo id, served here by the fake hub."""
    pytest.importorskip("vistok.conversion.convert_titok")
    case = parity_root / "titok" / "vq_direct"
    if not case.is_dir():
        pytest.skip(f"{case} not found")
    repo_id = "yucornetto/tokenizer_titok_l32_imagenet"
    assert hub_repo_id("titok", "titok-l32") == repo_id == hub_repo_id("titok", "titok_l32")
    publish(case / "original", repo_id)
    convert("titok", "titok-l32", tmp_path / "dest", case)
    model = AutoModel.from_pretrained(tmp_path / "dest").eval()
    io = load_file(case / "io.safetensors")
    with torch.no_grad():
        tokens = model.encode(io["pixel_values"]).tokens
        reconstruction = model.decode(tokens).reconstruction
    assert torch.equal(tokens, io["codes"].reshape(tokens.shape))
    torch.testing.assert_close(reconstruction, io["reconstruction"], atol=1e-4, rtol=1e-4)


def test_hub_source_errors(hub_client, tmp_path):
    with pytest.raises(ConversionError, match="known: .*titok_l32"):
        hub_repo_id("titok", "titok-l33")
    assert hub_repo_id("titok", str(tmp_path)) is None  # an existing local path is never a Hub id
    with pytest.raises(ConversionError, match="was not found"):
        convert_main_raising("titok", "vistok-tests/no-such-release", tmp_path / "x")
    HfApi().create_repo("vistok-tests/not-a-release")
    HfApi().upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="vistok-tests/not-a-release")
    with pytest.raises(ConversionError, match=r"has none of \['model.safetensors'"):
        convert_main_raising("titok", "vistok-tests/not-a-release", tmp_path / "y")
    assert HubFiles(required=(("a.json", "*.yaml"),), optional=("v/*",)).select(
        ["b.yaml", "c.yaml", "v/w", "x.bin"], "r") == ["b.yaml", "c.yaml", "v/w"]


def convert_main_raising(arch, source, dest):
    from vistok.conversion.__main__ import convert as convert_api

    return convert_api(arch, source, dest)


def write_images(folder: Path, sizes=((40, 30), (33, 47), (64, 64))) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for index, (width, height) in enumerate(sizes):
        pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / f"image_{index}.png")
    return folder


def ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two [C, H, W] images in [0, 1] written out with scipy: 11-tap Gaussian (sigma 1.5) local statistics,
    K1 = 0.01, K2 = 0.03, valid positions only, mean over positions then channels."""
    from scipy.ndimage import gaussian_filter

    c1, c2, values = 0.01**2, 0.03**2, []
    for x, y in zip(a, b):
        blur = lambda image: gaussian_filter(image, 1.5, truncate=3.5)[5:-5, 5:-5]  # noqa: E731  (radius 5: 11 taps)
        mx, my = blur(x), blur(y)
        sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        values.append((((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))).mean())
    return float(np.mean(values))


def test_end_to_end_variant_name_to_report(parity_root, hub_client, tmp_path, monkeypatch):
    """The README's end-to-end command: a released variant by name, converted from the Hub, run on an image folder,
    writing tokens (equal to vistok-tokenize's), one reconstruction file per image (equal to the model's decode) and
    a report (equal to metrics computed here from the decode)."""
    from PIL import Image
    from transformers import AutoImageProcessor

    from vistok.evaluation import main as eval_main
    from vistok.modeling.configuration_titok import TITOK_VIT_PRESETS
    from vistok.tokenize_dataset import main as tokenize_main

    case = parity_root / "titok" / "vq_direct"
    if not case.is_dir():
        pytest.skip(f"{case} not found")
    import datasets

    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)  # imagefolder's usage ping to S3
    # the tiny release names tiny ViT presets; real releases name the built-in small/base/large
    for name, sizes in json.loads((case / "presets.json").read_text()).items():
        monkeypatch.setitem(TITOK_VIT_PRESETS, name, sizes)
    publish(case / "original", "yucornetto/tokenizer_titok_l32_imagenet")
    images = write_images(tmp_path / "images")
    out = tmp_path / "out"
    command = ["titok-l32", str(images), "--output-dir", str(out), "--save-tokens", "--save-reconstructions",
               "--batch-size", "2", "--shard-size", "2", "--no-progress"]
    assert eval_main(command) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["num_images"] == 3 and (out / "grid.png").is_file() and (out / "report.md").is_file()
    converted = Path(hub_client.hf_home) / "vistok" / "converted" / "titok_l32"
    assert report["model"] == "titok-l32" and (converted / "model.safetensors").is_file()
    config = json.loads((converted / "config.json").read_text())
    assert report["tokens_per_image"] == config["num_latent_tokens"]

    # tokens: the same parquet dataset as vistok-tokenize's, file for file
    assert tokenize_main(["titok-l32", str(images), str(tmp_path / "tokenized"), "--batch-size", "2",
                          "--shard-size", "2", "--no-progress"]) == 0
    ours, theirs = sorted((out / "tokens" / "data").glob("*.parquet")), sorted(
        (tmp_path / "tokenized" / "data").glob("*.parquet"))
    assert [f.name for f in ours] == [f.name for f in theirs] == ["train-00000-of-00002.parquet",
                                                                  "train-00001-of-00002.parquet"]
    for a, b in zip(ours, theirs):
        assert pq.read_table(a).equals(pq.read_table(b))
    assert json.loads((out / "tokens" / "vistok_tokenize.json").read_text())["num_rows"] == 3

    # reconstructions and metrics against the model's own decode of each image
    model = AutoModel.from_pretrained(converted).eval()
    processor = AutoImageProcessor.from_pretrained(converted)
    for index, item in enumerate(report["images"]):
        name = f"image_{index}"
        assert item["file"] == f"{name}.png" and item["reconstruction"] == f"reconstructions/{name}.png"
        pixel_values = processor(Image.open(images / f"{name}.png"), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            tokens = model.encode(pixel_values).tokens
            decoded = model.decode(tokens).reconstruction
        saved = Image.open(out / item["reconstruction"])
        assert saved.size == (pixel_values.shape[-1], pixel_values.shape[-2])
        assert np.array_equal(np.asarray(saved), np.asarray(processor.postprocess(decoded)[0]))
        assert pq.read_table(ours[index // 2]).column("tokens")[index % 2].as_py() == tokens[0].tolist()
        original = pixel_values[0].double().clamp(0, 1).numpy()  # TiTok's input range is [0, 1]
        reconstructed = decoded[0].double().clamp(0, 1).numpy()
        assert item["psnr"] == pytest.approx(10 * np.log10(1 / ((original - reconstructed) ** 2).mean()), rel=1e-6)
        assert item["ssim"] == pytest.approx(ssim_reference(reconstructed, original), abs=1e-6)

    requests = len(hub_client.hub.requests)
    assert eval_main(["titok-l32", str(images), "--output-dir", str(out), "--no-progress"]) == 0
    assert len(hub_client.hub.requests) == requests, "the converted variant is reused, not downloaded again"
