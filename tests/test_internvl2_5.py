"""InternVL2.5: conversion of the original releases into transformers' ``InternVLForConditionalGeneration``.

Parity: every case under ``parity_root/internvl2_5/`` is converted through the CLI entry point, reloaded with the Auto
classes and compared with the original code's outputs (pixel values exact from the raw image; vision states,
projected embeddings and logits at 1e-4). Shared model checks (LoRA, batching, offload, ...) run in
``test_common_multimodal.py`` through ``mm_testers/internvl.py``.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, AutoModelForImageTextToText, InternVLForConditionalGeneration

import vistok  # noqa: F401
from vistok.conversion.__main__ import main as convert_main
from vistok.conversion.convert_internvl2_5 import split_wqkv
from vistok.conversion.utils import ConversionError


def parity_cases(parity_root):
    cases = sorted(p for p in (parity_root / "internvl2_5").iterdir() if (p / "original").is_dir())
    if not cases:
        pytest.skip("no internvl2_5 parity cases")
    return cases


def convert_case(case, dest, *extra) -> None:
    assert convert_main(["internvl2_5", str(case / "original"), str(dest), *extra]) == 0


def assert_close(name, got, expected, atol=1e-4, diffs=None):
    got, expected = got.detach().float(), expected.float()
    assert got.shape == expected.shape, f"{name}: {tuple(got.shape)} vs {tuple(expected.shape)}"
    diff = (got - expected).abs().max().item()
    if diffs is not None:
        diffs[name] = diff
    torch.testing.assert_close(got, expected, atol=atol, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_parity_with_the_original_code(parity_root, tmp_path):
    report = {}
    for case in parity_cases(parity_root):
        dest = tmp_path / case.name
        convert_case(case, dest)
        io = load_file(str(case / "io.safetensors"))
        with safe_open(str(case / "io.safetensors"), "pt") as handle:
            meta = handle.metadata()

        model, info = AutoModelForImageTextToText.from_pretrained(dest, output_loading_info=True)
        assert all(not v for v in info.values()), info
        assert isinstance(model, InternVLForConditionalGeneration)
        assert model.config.image_token_id == int(meta["img_context_token_id"])
        model.eval()

        image_processor = AutoImageProcessor.from_pretrained(dest, backend="pil")
        processed = image_processor(Image.fromarray(io["raw_image"].numpy()), return_tensors="pt")
        assert torch.equal(processed["pixel_values"], io["pixel_values"]), case.name  # exact, incl. tile order
        assert processed["num_patches"].tolist() == [io["pixel_values"].shape[0]]

        diffs = {}
        with torch.no_grad():
            pixel_values = io["pixel_values"]
            vision = model.model.vision_tower(pixel_values=pixel_values).last_hidden_state
            assert_close("vision_last_hidden_state", vision, io["vision_last_hidden_state"], diffs=diffs)
            features = model.model.get_image_features(pixel_values=pixel_values).pooler_output
            assert_close("vit_embeds", features, io["vit_embeds"], diffs=diffs)
            input_ids = io["input_ids"]
            logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                           pixel_values=pixel_values).logits
            assert_close("logits", logits, io["logits"], diffs=diffs)
        report[case.name] = diffs
    print("InternVL2.5 parity max abs diffs:", json.dumps(report, indent=1))


def test_split_wqkv_matches_the_grouped_layout():
    # 4 q heads, 2 kv heads, head_dim 1, hidden 1: rows per KV group h are [q(2h), q(2h+1), k_h, v_h]
    rows = torch.tensor([[10.0], [11.0], [20.0], [30.0], [12.0], [13.0], [21.0], [31.0]])
    parts = split_wqkv("l.attention.wqkv.weight", rows, num_heads=4, num_kv_heads=2)
    assert parts["l.attention.q.weight"].flatten().tolist() == [10, 11, 12, 13]
    assert parts["l.attention.k.weight"].flatten().tolist() == [20, 21]
    assert parts["l.attention.v.weight"].flatten().tolist() == [30, 31]


def test_sharded_checkpoint_converts_to_the_same_model(parity_root, tmp_path):
    case = parity_cases(parity_root)[0]
    state = load_file(str(case / "original" / "model.safetensors"))
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    keys = sorted(state)
    chunks = [keys[i::3] for i in range(3)]
    weight_map = {}
    for index, chunk in enumerate(chunks, start=1):
        name = f"model-{index:05d}-of-00003.safetensors"
        save_file({k: state[k] for k in chunk}, str(sharded / name))
        weight_map |= dict.fromkeys(chunk, name)
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for name in ("config.json", "generation_config.json"):
        (sharded / name).write_bytes((case / "original" / name).read_bytes())

    convert_case(case, tmp_path / "single")
    assert convert_main(["internvl2_5", str(sharded), str(tmp_path / "from_shards")]) == 0
    single = load_file(str(tmp_path / "single" / "model.safetensors"))
    from_shards = load_file(str(tmp_path / "from_shards" / "model.safetensors"))
    assert single.keys() == from_shards.keys()
    assert all(torch.equal(single[k], from_shards[k]) for k in single)


def test_missing_and_unmapped_tensors_are_named(parity_root, tmp_path):
    case = parity_cases(parity_root)[0]
    state = load_file(str(case / "original" / "model.safetensors"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((case / "original" / "config.json").read_bytes())
    state["vision_model.extra_head.weight"] = torch.zeros(2)
    removed = next(k for k in state if k.endswith("mlp1.3.weight"))
    del state[removed]
    save_file(state, str(broken / "model.safetensors"))
    from vistok.conversion.convert_internvl2_5 import convert

    with pytest.raises(ConversionError) as error:
        convert(broken)
    assert "vision_model.extra_head.weight" in str(error.value)
    assert "model.multi_modal_projector.linear_2.weight" in str(error.value)


def test_bfloat16_conversion_keeps_every_tensor(parity_root, tmp_path):
    case = parity_cases(parity_root)[0]
    convert_case(case, tmp_path / "bf16", "--dtype", "bfloat16")
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    io = load_file(str(case / "io.safetensors"))
    with torch.no_grad():
        logits = model(input_ids=io["input_ids"], pixel_values=io["pixel_values"].bfloat16()).logits.float()
    # bf16 weights: a few percent of the logit range
    assert (logits - io["logits"]).abs().max() < 0.05 * io["logits"].abs().max()
    assert np.isfinite(logits.numpy()).all()
