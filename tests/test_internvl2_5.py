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


def source_with_tokenizer(case, folder):
    """The case's original release plus tokenizer files whose <img> / </img> / <IMG_CONTEXT> sit at the ids the case
    uses, as in a hub repo (Qwen2.5 layout: one tokenizer.json)."""
    from mm_testers import make_char_tokenizer

    with safe_open(str(case / "io.safetensors"), "pt") as handle:
        meta = handle.metadata()
    vocab_size = json.loads((case / "original" / "config.json").read_text())["llm_config"]["vocab_size"]
    special = {int(meta["img_start_token_id"]): "<img>", int(meta["img_end_token_id"]): "</img>",
               int(meta["img_context_token_id"]): "<IMG_CONTEXT>", 150: "<|endoftext|>", 151: "<|im_start|>",
               152: "<|im_end|>"}
    folder.mkdir()
    for path in (case / "original").iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    make_char_tokenizer(vocab_size, special).save_pretrained(folder)
    return folder


def test_new_user_pipeline_on_an_image_and_a_video_file(parity_root, tmp_path):
    """Convert a release that ships tokenizer files, then use only the pipeline, like a new user."""
    from transformers import AutoProcessor, pipeline

    from mm_testers import answer_by_hand, read_video, write_video

    case = parity_cases(parity_root)[0]
    source = source_with_tokenizer(case, tmp_path / "release")
    dest = tmp_path / "converted"
    assert convert_main(["internvl2_5", str(source), str(dest)]) == 0
    processor = AutoProcessor.from_pretrained(dest)
    assert processor.chat_template and processor.image_token == "<IMG_CONTEXT>"
    model = AutoModelForImageTextToText.from_pretrained(dest).eval()
    assert 152 in model.generation_config.eos_token_id  # <|im_end|> ends the answer, as in the original chat()

    pipe = pipeline("image-text-to-text", model=str(dest))
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    video_path = tmp_path / "clip.mp4"
    write_video(video_path, rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    for part, media in (({"type": "image", "image": image}, {"images": [image]}),
                        ({"type": "video", "path": str(video_path)}, {"videos": [read_video(video_path)]})):
        messages = [{"role": "user", "content": [part, {"type": "text", "text": "Describe it."}]}]
        answer = pipe(text=messages, max_new_tokens=4, do_sample=False, return_full_text=False)[0]["generated_text"]
        assert answer == answer_by_hand(model, processor, messages, 4, **media)
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>system\n")  # the original default system message
