"""The scripts in ``examples/`` run end to end on tiny models and generated data."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel

import vistok  # noqa: F401
from testers import all_testers


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"vistok_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_setup(tmp_path):
    tester = next(t for t in all_testers() if t.name == "titok-vq")
    model_dir = tmp_path / "model"
    tester.make_model().save_pretrained(model_dir)
    tester.make_image_processor().save_pretrained(model_dir)
    data_dir = tmp_path / "images"
    data_dir.mkdir()
    rng = np.random.RandomState(0)
    for index in range(6):
        y, x = np.mgrid[0:40, 0:36]
        pixels = np.stack([x / 36, y / 40, 0.5 + 0.5 * np.sin(x / 4.0 + index)], axis=-1) + 0.05 * rng.randn(40, 36, 3)
        Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(data_dir / f"{index}.png")
    return model_dir, data_dir


def test_finetune_lora_example(tiny_setup, tmp_path, capsys):
    model_dir, data_dir = tiny_setup
    out = tmp_path / "run"
    example = _load_example("finetune_lora")
    summary = example.main([str(model_dir), str(data_dir), "--output-dir", str(out), "--max-steps", "6",
                            "--batch-size", "6", "--learning-rate", "5e-2", "--lora-r", "4", "--merge"])
    printed = capsys.readouterr().out
    assert "reconstruction loss on 6 images" in printed and "training losses:" in printed

    # full-batch training with a constant learning rate: the loss goes down, on the fixed batch and while training
    assert summary["steps"] == 6 and len(summary["train_losses"]) == 6
    assert summary["loss_after"] < summary["loss_before"]
    assert summary["train_losses"][-1] < summary["train_losses"][0]
    assert json.loads((out / "summary.json").read_text()) == summary

    # only LoRA matrices of the decoder's q/v projections were trained and saved
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in key for key in adapter)
    assert {re.search(r"(decoder\.layers\.\d+\.self_attn\.[qv]_proj)", key).group(1) for key in adapter} == {
        f"decoder.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qv"
    }
    assert summary["trainable_parameters"] == sum(t.numel() for t in adapter.values())
    assert any(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)   # B starts at zero: it moved

    # the reloaded adapter reproduces the trained model; merging keeps the output and removes the LoRA layers
    assert summary["reload_max_abs_diff"] <= 1e-6
    assert summary["merge_max_abs_diff"] <= 1e-5
    merged = AutoModel.from_pretrained(out / "merged")
    base = AutoModel.from_pretrained(model_dir)
    merged_state, base_state = merged.state_dict(), base.state_dict()
    assert merged_state.keys() == base_state.keys()
    changed = {k for k in base_state if not torch.equal(merged_state[k], base_state[k])}
    assert changed == {f"decoder.layers.{i}.self_attn.{p}_proj.weight" for i in range(2) for p in "qv"}
