"""LLaVA-Mini: parity with the original code, conversion layouts, compression maths, batching and generation."""

import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageTextToText

import vistok  # noqa: F401
from vistok import LlavaMiniConfig, LlavaMiniForConditionalGeneration
from vistok.conversion.__main__ import main as convert_main
from vistok.conversion.utils import ConversionError
from vistok.modeling.modeling_llava_mini import compressor_position_table


TOL = dict(atol=1e-4, rtol=1e-4)
ORIGINAL_IMAGE_TOKEN = -200  # IMAGE_TOKEN_INDEX of the original code


def _cases(parity_root):
    root = parity_root / "llava_mini"
    cases = sorted(p for p in root.iterdir() if (p / "io.safetensors").is_file()) if root.is_dir() else []
    if not cases:
        pytest.skip(f"no llava_mini parity cases under {root}")
    return cases


def _convert(source, dest, *extra):
    assert convert_main(["llava-mini", str(source), str(dest), *extra]) == 0
    model, info = AutoModelForImageTextToText.from_pretrained(dest, output_loading_info=True)
    assert not any(info.values()), info
    return model.eval()


def expand_original_ids(input_ids: torch.Tensor, per_placeholder: int, token_id: int) -> torch.Tensor:
    """The original marks an image (or a whole video) with one -200; vistok with one placeholder per vision token."""
    rows = []
    for row in input_ids.tolist():
        rows.append([t for tok in row for t in ([token_id] * per_placeholder if tok == ORIGINAL_IMAGE_TOKEN else [tok])])
    return torch.tensor(rows)


def _original_call(io, config):
    """vistok keyword arguments equivalent to the original `images=` call of a case."""
    images = io["pixel_values"]
    if images.ndim == 6:  # (B, T, parts, 3, S, S): one video per sample
        frames = images.shape[1]
        ids = expand_original_ids(io["input_ids"], frames * config.num_vision_tokens, config.video_token_id)
        return ids, {"pixel_values_videos": images}
    ids = expand_original_ids(io["input_ids"], config.num_vision_tokens, config.image_token_id)
    return ids, {"pixel_values": images[:, 0] if images.shape[1] == 1 else images}


def test_parity_with_original(parity_root, tmp_path):
    for case in _cases(parity_root):
        io = load_file(str(case / "io.safetensors"))
        model = _convert(case / "original", tmp_path / case.name)
        assert isinstance(model, LlavaMiniForConditionalGeneration)
        ids, pixels = _original_call(io, model.config)
        attention_mask = io.get("attention_mask")
        with torch.no_grad():
            inputs_embeds, features = model.model.merge_multimodal_inputs(ids, attention_mask=attention_mask, **pixels)
            logits = model(input_ids=ids, attention_mask=attention_mask, **pixels).logits
        if "clip_patch_features" in io and "pixel_values_videos" not in pixels:
            torch.testing.assert_close(features.last_hidden_state, io["clip_patch_features"], **TOL)
        if "compressor_output" in io:
            torch.testing.assert_close(
                features.compressed_tokens.reshape(io["compressor_output"].shape), io["compressor_output"], **TOL
            )
        if "vision_tokens" in io:
            torch.testing.assert_close(features.pooler_output.reshape(io["vision_tokens"].shape), io["vision_tokens"], **TOL)
        # fused text: compare the real text positions (the original has one placeholder, vistok C*C per image)
        original_text = io["input_ids"] > 0
        vistok_text = (ids != model.config.image_token_id) & (ids != model.config.video_token_id)
        torch.testing.assert_close(
            features.fused_text_states[vistok_text], io["fused_text_states"][original_text], **TOL
        )
        torch.testing.assert_close(inputs_embeds, io["inputs_embeds"], **TOL)
        torch.testing.assert_close(logits, io["logits"], **TOL)

        # the CLIP preprocessing with the PIL backend reproduces the original pixels exactly
        if "image_uint8" in io and io["pixel_values"].ndim == 5 and io["pixel_values"].shape[1] == 1:
            processor = AutoImageProcessor.from_pretrained(tmp_path / case.name, backend="pil")
            images = [Image.fromarray(image.numpy()) for image in io["image_uint8"]]
            pixel_values = processor(images, return_tensors="pt")["pixel_values"]
            torch.testing.assert_close(pixel_values, io["pixel_values"][:, 0], atol=0, rtol=0)


def test_compressor_table_matches_the_checkpoint(parity_root):
    """The 2D sin-cos table vistok recomputes at init equals the one the original stored (MAE formula)."""
    for case in _cases(parity_root):
        stored = load_file(str(case / "original" / "model.safetensors"))["model.compressor.pos_embed"]
        grid = int(stored.shape[0] ** 0.5)
        torch.testing.assert_close(compressor_position_table(stored.shape[1], grid), stored.float(), atol=1e-6, rtol=0)


def test_compressor_table_hand_values():
    # C = 2, D = 4: channel 0 = sin(col), 1 = cos(col), 2 = sin(row), 3 = cos(row) (omega = 1 for D/4 = 1 frequency)
    table = compressor_position_table(4, 2)
    s1, c1 = torch.sin(torch.tensor(1.0)).item(), torch.cos(torch.tensor(1.0)).item()
    expected = torch.tensor([[0, 1, 0, 1], [s1, c1, 0, 1], [0, 1, s1, c1], [s1, c1, s1, c1]])
    torch.testing.assert_close(table, expected)


def _split_release(case, dest, num_shards=2, drop_tower=False):
    """A copy of a case's `original/` as a sharded release (optionally without the tower in the checkpoint)."""
    shutil.copytree(case / "original", dest)
    state = load_file(str(dest / "model.safetensors"))
    (dest / "model.safetensors").unlink()
    if drop_tower:
        state = {k: v for k, v in state.items() if not k.startswith("model.vision_tower.")}
    keys = sorted(state)
    weight_map = {}
    for index in range(num_shards):
        name = f"model-{index + 1:05d}-of-{num_shards:05d}.safetensors"
        part = {k: state[k].contiguous() for k in keys[index::num_shards]}
        save_file(part, str(dest / name))
        weight_map.update({k: name for k in part})
    (dest / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dest


@pytest.mark.parametrize("drop_tower", [False, True], ids=["tower_inside", "tower_folder"])
def test_sharded_release_layouts(parity_root, tmp_path, drop_tower):
    case = _cases(parity_root)[0]
    source = _split_release(case, tmp_path / "release", drop_tower=drop_tower)
    model = _convert(source, tmp_path / "converted")
    io = load_file(str(case / "io.safetensors"))
    ids, pixels = _original_call(io, model.config)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, **pixels).logits, io["logits"], **TOL)


def test_conversion_is_strict(parity_root, tmp_path):
    case = _cases(parity_root)[0]
    source = tmp_path / "release"
    shutil.copytree(case / "original", source)
    state = load_file(str(source / "model.safetensors"))
    save_file(state | {"model.extra_head.weight": torch.zeros(2)}, str(source / "model.safetensors"))
    with pytest.raises(ConversionError, match="model.extra_head.weight"):
        vistok.conversion.__main__.convert("llava-mini", source, tmp_path / "a")
    state.pop("model.compressor.ln_q.bias")
    save_file(state, str(source / "model.safetensors"))
    with pytest.raises(ConversionError, match="model.compressor.ln_q.bias"):
        vistok.conversion.__main__.convert("llava-mini", source, tmp_path / "b")
    # no tower in the checkpoint and no tower folder
    save_file({k: v for k, v in load_file(str(case / "original" / "model.safetensors")).items()
               if not k.startswith("model.vision_tower.")}, str(source / "model.safetensors"))
    shutil.rmtree(source / "vision_tower")
    with pytest.raises(ConversionError, match="mm_vision_tower"):
        vistok.conversion.__main__.convert("llava-mini", source, tmp_path / "c")
