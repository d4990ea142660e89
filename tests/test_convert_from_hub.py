"""``vistok-convert ARCH <Hub repo id | variant name> DEST`` against the local ``FakeHub`` (no network).

Every parity case's ``original/`` folder is uploaded as a release repo (with extra files a converter must not
download), converted from the Hub, and must give byte-identical weights to converting the local folder (which the
parity tests check against the original code's outputs). FlexTok is also published the way it is released: the VAE
in a repo of its own that the tokenizer config names.
"""

import json
import shutil
from pathlib import Path

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


def test_end_to_end_variant_name_to_report(parity_root, hub_client, tmp_path, monkeypatch):
    """The README's end-to-end command: a released variant by name, converted from the Hub, run on an image folder."""
    from vistok.evaluation import main as eval_main
    from vistok.modeling.configuration_titok import TITOK_VIT_PRESETS

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
    assert eval_main(["titok-l32", str(images), "--output-dir", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["num_images"] == 3 and (out / "grid.png").is_file()
    converted = Path(hub_client.hf_home) / "vistok" / "converted" / "titok_l32"
    assert report["model"] == "titok-l32" and (converted / "model.safetensors").is_file()
    config = json.loads((converted / "config.json").read_text())
    assert report["tokens_per_image"] == config["num_latent_tokens"]
    requests = len(hub_client.hub.requests)
    assert eval_main(["titok-l32", str(images), "--output-dir", str(out), "--no-progress"]) == 0
    assert len(hub_client.hub.requests) == requests, "the converted variant is reused, not downloaded again"
