"""``vistok-eval``'s dataset and precision options: ``--split`` (and the default split order), ``--image-column``,
``--dtype``; and the LoRA fine-tuning example on every architecture."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from testers import all_testers
from vistok.evaluation import main


TESTERS = {t.name: t for t in all_testers()}
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _images(folder: Path, count: int, seed: int, size=(36, 44)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        y, x = np.mgrid[0 : size[1], 0 : size[0]]
        pixels = np.stack([x / size[0], y / size[1], 0.5 + 0.4 * np.sin(x / 3.0 + index + seed)], -1)
        pixels = np.clip(pixels + 0.05 * rng.standard_normal(pixels.shape), 0, 1)
        Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / f"s{seed}_{index}.png")


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    """An image folder with train (3 images) and test (2 images) splits."""
    root = tmp_path_factory.mktemp("splits")
    _images(root / "train", 3, seed=1)
    _images(root / "test", 2, seed=2)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tester = TESTERS["titok-vq"]
    folder = tmp_path_factory.mktemp("titok")
    tester.make_model().save_pretrained(folder)
    tester.make_image_processor().save_pretrained(folder)
    return folder


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_split_option_and_default_split_order(model_dir, split_dir, tmp_path):
    base = [str(model_dir), str(split_dir), "--no-progress", "--grid-images", "0"]
    # no --split: validation, else test, else train
    assert main(base + ["--output-dir", str(tmp_path / "default")]) == 0
    report = _report(tmp_path / "default")
    assert report["split"] == "test" and report["num_images"] == 2
    assert sorted(item["file"] for item in report["images"]) == ["s2_0.png", "s2_1.png"]
    assert main(base + ["--output-dir", str(tmp_path / "train"), "--split", "train"]) == 0
    report = _report(tmp_path / "train")
    assert report["split"] == "train" and report["num_images"] == 3
    assert sorted(item["file"] for item in report["images"]) == ["s1_0.png", "s1_1.png", "s1_2.png"]


def test_image_column_option(model_dir, split_dir, tmp_path, capsys):
    base = [str(model_dir), str(split_dir), "--no-progress", "--grid-images", "0", "--split", "train"]
    assert main(base + ["--output-dir", str(tmp_path / "a"), "--image-column", "image"]) == 0
    assert _report(tmp_path / "a")["num_images"] == 3
    assert main(base + ["--output-dir", str(tmp_path / "b"), "--image-column", "jpg"]) == 2
    assert "image column 'jpg' not found" in capsys.readouterr().err


def test_dtype_option(model_dir, split_dir, tmp_path):
    base = [str(model_dir), str(split_dir), "--no-progress", "--grid-images", "0", "--split", "train"]
    assert main(base + ["--output-dir", str(tmp_path / "fp32")]) == 0
    assert main(base + ["--output-dir", str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    full, half = _report(tmp_path / "fp32"), _report(tmp_path / "bf16")
    assert full["dtype"] == "float32" and half["dtype"] == "bfloat16"
    # same images, close metrics, but really computed in another precision
    assert [i["file"] for i in full["images"]] == [i["file"] for i in half["images"]]
    assert abs(full["mean_psnr"] - half["mean_psnr"]) < 1.0
    assert any(a["psnr"] != b["psnr"] for a, b in zip(full["images"], half["images"]))


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"vistok_example_{name}_all", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["titok-vae", "maetok", "flextok"])
def test_lora_example_on_every_architecture(name, tmp_path, capsys):
    tester = TESTERS[name]
    model_dir = tmp_path / "model"
    tester.make_model().save_pretrained(model_dir)
    tester.make_image_processor().save_pretrained(model_dir)
    _images(tmp_path / "images", 4, seed=3)
    example = _load_example("finetune_lora")
    summary = example.main([str(model_dir), str(tmp_path / "images"), "--output-dir", str(tmp_path / "run"),
                            "--max-steps", "3", "--batch-size", "4", "--learning-rate", "5e-2", "--lora-r", "2",
                            "--eval-images", "4", "--merge"])
    capsys.readouterr()
    assert summary["steps"] == 3 and len(summary["train_losses"]) == 3
    assert all(np.isfinite(summary["train_losses"]))
    assert summary["trainable_parameters"] > 0 and summary["reload_max_abs_diff"] <= 1e-5
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "run" / "merged" / "config.json").is_file()
