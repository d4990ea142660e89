"""InternVL2.5: conversion of the original releases into transformers' ``InternVLForConditionalGeneration``.

Parity: every case under ``parity_root/internvl2_5/`` is converted through the CLI entry point, reloaded with the Auto
classes and compared with the original code's outputs (pixel values exact from the raw image; vision states,
projected embeddings and logits at 1e-4). Shared model checks (LoRA, batching, offload, ...) run in
``test_common_multimodal.py`` through ``mm_testers/internvl.py``.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import (
    AutoImageProcessor,
    AutoModelForImageTextToText,
    GotOcr2ImageProcessorPil,
    InternVLForConditionalGeneration,
)

import vistok  # noqa: F401
from hub_fixtures import fake_hub, hub_client  # noqa: F401  (pytest fixtures)
from vistok.conversion.__main__ import main as convert_main
from vistok.conversion.convert_internvl2_5 import convert, split_wqkv
from vistok.conversion.utils import ConversionError


def parity_cases(parity_root):
    cases = sorted(p for p in (parity_root / "internvl2_5").iterdir() if (p / "original").is_dir())
    if not cases:
        pytest.skip("no internvl2_5 parity cases")
    return cases


def case_with_llm(parity_root, model_type: str):
    """The first parity case whose original LLM has ``model_type`` (``qwen2`` / ``internlm2``); skips without one."""
    def llm_type(case):
        return json.loads((case / "original" / "config.json").read_text())["llm_config"]["model_type"]

    case = next((c for c in parity_cases(parity_root) if llm_type(c) == model_type), None)
    if case is None:
        pytest.skip(f"no internvl2_5 parity case with a {model_type} LLM")
    return case


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

    from mm_testers import answer_by_hand, write_video

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
    write_video(video_path, rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), fps=5)  # 8 frames sampled
    # like the original `load_video`: 8 frames at segment centres
    assert processor.video_processor(videos=[str(video_path)], return_tensors="pt")["pixel_values_videos"].shape[1] == 8
    for part, media in (({"type": "image", "image": image}, {"images": [image]}),
                        ({"type": "video", "path": str(video_path)}, {"videos": [str(video_path)]})):
        messages = [{"role": "user", "content": [part, {"type": "text", "text": "Describe it."}]}]
        answer = pipe(text=messages, max_new_tokens=4, do_sample=False, return_full_text=False)[0]["generated_text"]
        assert answer == answer_by_hand(model, processor, messages, 4, **media)
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>system\n")  # the original default system message


def test_internlm2_release_tokenizer_is_read_without_remote_code(parity_root, tmp_path):
    """InternLM2.5-based releases ship a sentencepiece ``tokenizer.model`` behind remote code (``InternLM2Tokenizer``)
    plus added special tokens; the converter reads it without that code. Reference: sentencepiece itself."""
    spm = pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")
    case = case_with_llm(parity_root, "internlm2")
    with safe_open(str(case / "io.safetensors"), "pt") as handle:
        meta = handle.metadata()
    vocab_size = json.loads((case / "original" / "config.json").read_text())["llm_config"]["vocab_size"]
    source = tmp_path / "release"
    source.mkdir()
    for path in (case / "original").iterdir():
        (source / path.name).write_bytes(path.read_bytes())
    # a tiny sentencepiece BPE model; InternVL's tokens are added after it, up to the model's vocabulary size
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "what", "is", "shown", "here", "describe", "image", "frame"]
    words += ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 8))) for _ in range(400)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(300)))
    image_ids = [int(meta["img_start_token_id"]), int(meta["img_end_token_id"]), int(meta["img_context_token_id"])]
    sp_size = min(image_ids) - 4
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=sp_size,
                                   model_type="bpe", character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0)
    (source / "tokenizer.model").write_bytes((tmp_path / "sp.model").read_bytes())
    added_tokens = ["<|im_end|>", "<|im_start|>", "<|action_start|>", "<|action_end|>",
                    "<img>", "</img>", "<IMG_CONTEXT>"]
    added = dict(zip(range(sp_size, vocab_size), added_tokens))
    assert added[image_ids[2]] == "<IMG_CONTEXT>"
    (source / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "InternLM2Tokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>",
        "added_tokens_decoder": {str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                                          "normalized": False, "single_word": False} for i, t in added.items()},
    }))

    dest = tmp_path / "converted"
    assert convert_main(["internvl2_5", str(source), str(dest)]) == 0
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(dest)
    tokenizer = processor.tokenizer
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<img>", "</img>", "<IMG_CONTEXT>")] == image_ids
    assert json.loads((dest / "config.json").read_text())["image_token_id"] == image_ids[2]
    reference = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    text = "what is shown here describe the cat"
    assert tokenizer(text).input_ids == [reference.bos_id(), *reference.encode(text)]
    assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text
    # sentencepiece's defaults: NFKC character map (full-width letters), extra whitespace removed, dummy prefix
    for text in ("  what   is\tshown  here ", "ｗｈａｔ ｉｓ shown", "the cat\n  sat"):
        assert tokenizer(text).input_ids == [reference.bos_id(), *reference.encode(text)], text
    inputs = processor(text=["<IMG_CONTEXT>\ndescribe"], images=[Image.new("RGB", (20, 36))], return_tensors="pt")
    assert (inputs["input_ids"] == image_ids[2]).sum() == 4 * inputs["pixel_values"].shape[0]


def test_convert_from_a_hub_repo_id(parity_root, hub_client, tmp_path):
    """SOURCE may be the Hub id of an original release: only weights / configs / tokenizer files are downloaded."""
    from huggingface_hub import HfApi

    case = parity_cases(parity_root)[0]
    repo_id = "OpenGVLab-tests/InternVL2_5-tiny"
    release = tmp_path / "release"
    release.mkdir()
    for path in (case / "original").iterdir():
        (release / path.name).write_bytes(path.read_bytes())
    (release / "modeling_internvl_chat.py").write_text("raise RuntimeError('remote code must never run')\n")
    api = HfApi()
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=release)
    assert convert_main(["internvl2_5", repo_id, str(tmp_path / "converted")]) == 0
    downloaded = {p.name for p in hub_client.cache_dir.rglob("*") if p.is_file() and "snapshots" in p.parts}
    assert "model.safetensors" in downloaded and "modeling_internvl_chat.py" not in downloaded
    io = load_file(str(case / "io.safetensors"))
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "converted").eval()
    with torch.no_grad():
        logits = model(input_ids=io["input_ids"], pixel_values=io["pixel_values"]).logits
    torch.testing.assert_close(logits, io["logits"], atol=1e-4, rtol=1e-4)


def test_internvit_6b_flavour_rmsnorm_qk_norm_no_bias(parity_root, tmp_path):
    """InternViT-6B layout (RMSNorm, QK-norm over all heads, no qkv bias): every tensor lands where it belongs."""
    case = case_with_llm(parity_root, "qwen2")
    state = load_file(str(case / "original" / "model.safetensors"))
    config = json.loads((case / "original" / "config.json").read_text())
    generator = torch.Generator().manual_seed(0)
    for key in [k for k in state if k.startswith("vision_model.encoder.layers.")]:
        if key.endswith(("norm1.bias", "norm2.bias", "attn.qkv.bias")):
            del state[key]
        elif key.endswith("attn.qkv.weight"):
            width = state[key].shape[1]
            stem = key.removesuffix("qkv.weight")
            state[stem + "q_norm.weight"] = 1 + 0.2 * torch.randn(width, generator=generator)
            state[stem + "k_norm.weight"] = 1 + 0.2 * torch.randn(width, generator=generator)
    config["vision_config"] |= {"norm_type": "rms_norm", "qkv_bias": False, "qk_normalization": True}
    source = tmp_path / "release"
    source.mkdir()
    (source / "config.json").write_text(json.dumps(config))
    save_file(state, str(source / "model.safetensors"))

    assert convert_main(["internvl2_5", str(source), str(tmp_path / "converted")]) == 0
    model, info = AutoModelForImageTextToText.from_pretrained(tmp_path / "converted", output_loading_info=True)
    assert all(not v for v in info.values()), info
    vision = model.config.vision_config
    assert (vision.norm_type, vision.use_qk_norm, vision.attention_bias) == ("rms_norm", True, False)
    layer = model.model.vision_tower.encoder.layer[1]
    prefix = "vision_model.encoder.layers.1."
    assert torch.equal(layer.attention.q_norm.weight, state[prefix + "attn.q_norm.weight"])
    assert torch.equal(layer.attention.k_norm.weight, state[prefix + "attn.k_norm.weight"])
    assert torch.equal(layer.layernorm_before.weight, state[prefix + "norm1.weight"])
    qkv = state[prefix + "attn.qkv.weight"]
    width = qkv.shape[1]
    assert torch.equal(layer.attention.k_proj.weight, qkv[width:2 * width])
    assert layer.attention.q_proj.bias is None
    io = load_file(str(case / "io.safetensors"))
    with torch.no_grad():
        logits = model(input_ids=io["input_ids"], pixel_values=io["pixel_values"]).logits
    assert torch.isfinite(logits).all() and not torch.allclose(logits, io["logits"], atol=1e-3)  # the tower changed


# -- vistok's checking subclasses (modeling/modeling_internvl.py) ------------------------------------------------------
def tiny_internvl():
    """The shared tiny InternVL tester's config / processor (16 px tiles, patch 4, 4 tokens per tile)."""
    from mm_testers.internvl import TESTERS

    return TESTERS[0]


def tile_inputs(config, tile: int, num_tiles: int = 3) -> dict:
    """Tiles of side ``tile`` and, around them, as many placeholders as they give tokens:
    ``(tile // patch_size * downsample_ratio) ** 2`` per tile (written out, not read from the model)."""
    tokens_per_tile = int(tile // config.vision_config.patch_size[0] * config.downsample_ratio) ** 2
    input_ids = torch.tensor([[5, 6, *[config.image_token_id] * (tokens_per_tile * num_tiles), 7, 8]])
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "pixel_values": torch.randn(num_tiles, 3, tile, tile, generator=torch.Generator().manual_seed(tile))}


def test_checked_classes_compute_what_transformers_computes():
    """Same weights -> the same logits as transformers' own classes, bit for bit, on the processor's tiles and on other
    square tiles that transformers and the original accept (32 px: interpolated position embeddings, 16 tokens per
    tile; 17 px: the patch conv drops the last pixel row and column)."""
    from transformers import InternVLModel as PlainModel

    from mm_testers import with_the_same_weights
    from vistok.modeling.modeling_internvl import InternVLForConditionalGeneration as Checked
    from vistok.modeling.modeling_internvl import InternVLModel as CheckedModel

    tester = tiny_internvl()
    config = tester.get_config()
    checked, plain = with_the_same_weights(Checked, InternVLForConditionalGeneration, config)
    assert isinstance(checked.model, CheckedModel)
    processed = tester.example_inputs(tester.get_processor(), num_images=2)
    with torch.no_grad():
        for inputs in (processed, tile_inputs(config, 32), tile_inputs(config, 17)):
            assert torch.equal(checked(**inputs).logits, plain(**inputs).logits)
        checked_base, plain_base = with_the_same_weights(CheckedModel, PlainModel, config)
        assert torch.equal(checked_base(**processed).last_hidden_state, plain_base(**processed).last_hidden_state)


@pytest.mark.parametrize("shape, grid", [
    ((3, 3, 16, 14), "a 4 x 3 patch grid"),   # transformers: RuntimeError from a reshape
    ((3, 3, 8, 32), "a 2 x 8 patch grid"),    # 16 tokens reshape into 4 x 4: transformers silently scrambles the rows
    ((3, 3, 12, 12), "a 3 x 3 patch grid"),   # the pixel shuffle halves the side: 1.5 is not a whole number
    ((3, 3, 2, 2), "a 0 x 0 patch grid"),
])
def test_tiles_of_a_wrong_size_raise_a_value_error_naming_expected_and_got(shape, grid):
    tester = tiny_internvl()
    model = AutoModelForImageTextToText.from_config(tester.get_config()).eval()
    inputs = tile_inputs(model.config, 16) | {"pixel_values": torch.zeros(shape)}
    for call in (lambda: model(**inputs), lambda: model.get_image_features(pixel_values=inputs["pixel_values"]),
                 lambda: model.model(**inputs)):
        with pytest.raises(ValueError) as error:
            call()
        message = str(error.value)
        assert "[num_tiles, 3, 16, 16]" in message and f"got shape {shape}: {grid}" in message, message


@pytest.mark.parametrize("shape", [(3, 16, 16), (3, 4, 16, 16), (1, 3, 3, 16, 16)])
def test_pixel_values_that_are_not_rgb_tiles_raise_a_value_error(shape):
    model = AutoModelForImageTextToText.from_config(tiny_internvl().get_config()).eval()
    with pytest.raises(ValueError) as error:
        model.get_image_features(pixel_values=torch.zeros(shape))
    assert "[num_tiles, 3, 16, 16]" in str(error.value) and f"got shape {shape}." in str(error.value)


def test_tile_count_and_placeholders_disagree_names_the_tiles():
    model = AutoModelForImageTextToText.from_config(tiny_internvl().get_config()).eval()
    inputs = tile_inputs(model.config, 16, num_tiles=3)  # 3 tiles x 4 tokens = 12 placeholders
    inputs["pixel_values"] = inputs["pixel_values"][:2]
    with pytest.raises(ValueError) as error:
        model(**inputs)
    assert "tokens: 12, features: 8" in str(error.value)
    assert "2 tiles x 4 tokens per tile = 8 image features" in str(error.value)


def test_checked_classes_load_and_save_the_v4_key_layout_like_transformers(tmp_path):
    """transformers' InternVL class saves the v4 key layout (``language_model.model.*``) and renames it on loading; the
    subclass (declared transformers' own code) does both too: same file, same weights back. Plain transformers loading
    what vistok saves: ``test_common_multimodal.py::test_checked_subclasses_save_what_plain_transformers_loads``."""
    tester = tiny_internvl()
    model = AutoModelForImageTextToText.from_config(tester.get_config()).eval()
    model.save_pretrained(tmp_path / "saved")
    plain = InternVLForConditionalGeneration(model.config)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(tmp_path / "plain")
    saved, saved_by_plain = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("saved", "plain"))
    assert saved.keys() == saved_by_plain.keys() and any(k.startswith("language_model.model.") for k in saved)
    reloaded, info = AutoModelForImageTextToText.from_pretrained(tmp_path / "plain", output_loading_info=True)
    assert all(not v for v in info.values()), info
    assert type(reloaded) is type(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in reloaded.state_dict().items())


# -- InternLM2 tokenizer and chat template against the original code -------------------------------------------------
CHAT_FIXTURE = Path(__file__).parent / "fixtures" / "internvl2_5_internlm2_chat.json"


def internlm2_release(parity_root, tokenizer_entry: dict, folder: Path, **config_updates) -> Path:
    """The InternLM2 parity case's release with the fixture's tokenizer files (``tokenizer.model`` +
    ``tokenizer_config.json`` naming the remote-code ``InternLM2Tokenizer``), its LLM vocabulary resized to the
    tokenizer's (new embedding / head rows random) and ``config_updates`` in its config."""
    import base64

    case = case_with_llm(parity_root, "internlm2")
    state = load_file(str(case / "original" / "model.safetensors"))
    config = json.loads((case / "original" / "config.json").read_text())
    vocab_size = tokenizer_entry["vocab_size"]
    generator = torch.Generator().manual_seed(0)
    for key in ("language_model.model.tok_embeddings.weight", "language_model.output.weight"):
        rows = state[key][:vocab_size]
        extra = 0.02 * torch.randn(vocab_size - len(rows), rows.shape[1], generator=generator)
        state[key] = torch.cat([rows, extra]).contiguous()
    config["llm_config"]["vocab_size"] = vocab_size
    config.update(config_updates)
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    save_file(state, str(folder / "model.safetensors"))
    (folder / "tokenizer.model").write_bytes(base64.b64decode(tokenizer_entry["tokenizer_model_base64"]))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_entry["tokenizer_config"]))
    return folder


def expand_placeholders(processor, prompt: str, num_patches_list: list[int]) -> str:
    """The prompt with each image placeholder replaced the way the processor replaces it (``num_patches_list``: tiles
    per image; a video part takes one 1-tile entry per frame)."""
    parts, patches = re.split(r"(<IMG_CONTEXT>|<video>)", prompt), iter(num_patches_list)
    out = []
    for part in parts:
        if part == "<IMG_CONTEXT>":
            out.append(processor.replace_image_token({"num_patches": [next(patches)]}, 0))
        elif part == "<video>":
            frames = list(patches)
            out.append(processor.replace_video_token({"pixel_values_videos": [torch.zeros(len(frames))]}, 0))
        else:
            out.append(part)
    return "".join(out)


def assert_chats_match(processor, chats: list[dict]) -> None:
    """Each chat's prompt from the processor's chat template, expanded as the processor expands it, is the string the
    original chat() built, and the processor's ids (with images / a video of the same tile counts) are the ids chat()
    fed the model."""
    rng = np.random.default_rng(0)
    images_by_tiles = {1: (16, 16), 3: (16, 32)}  # (H, W): 1 x 1 grid; 2 x 1 grid + thumbnail
    for case in chats:
        prompt = processor.apply_chat_template(case["messages"], add_generation_prompt=True, tokenize=False)
        patches = case["num_patches_list"] or []
        assert expand_placeholders(processor, prompt, patches) == case["query"], case["name"]
        media = {}
        if any(part["type"] == "video" for message in case["messages"] for part in message["content"]):
            media = {"videos": [rng.integers(0, 256, (len(patches), 16, 16, 3), dtype=np.uint8)],
                     "do_sample_frames": False}
        elif patches:
            media["images"] = [Image.fromarray(rng.integers(0, 256, (*images_by_tiles[n], 3), dtype=np.uint8))
                               for n in patches]
        inputs = processor(text=[prompt], return_tensors="pt", **media)
        assert inputs["input_ids"][0].tolist() == case["input_ids"], case["name"]
        assert inputs.get("pixel_values", torch.zeros(0)).shape[0] == sum(patches)


def fixture_entry(variant: str) -> dict:
    fixture = json.loads(CHAT_FIXTURE.read_text(encoding="utf-8"))
    entry = next(e for e in fixture["tokenizers"] if e["name"] == variant)
    return entry | {"num_image_token": fixture["num_image_token"]}


@pytest.mark.parametrize("variant", ["dummy_prefix", "no_dummy_prefix", "dummy_prefix_remove_extra_whitespaces"])
def test_internlm2_tokenizer_and_chat_template_match_the_original_code(parity_root, tmp_path, variant):
    """Expected values: the original InternLM2Tokenizer and InternVLChatModel.chat() prompt building, run on the same
    tokenizer files (tests/fixtures/internvl2_5_internlm2_chat.json, provenance inside): text ids and decoding, the
    prompt string chat() builds (default and custom system message, several images, a second turn, a video, text
    only) and the ids it feeds the model."""
    from transformers import AutoProcessor, GenerationConfig

    entry = fixture_entry(variant)
    source = internlm2_release(parity_root, entry, tmp_path / "release")
    assert convert_main(["internvl2_5", str(source), str(tmp_path / "converted")]) == 0
    processor = AutoProcessor.from_pretrained(tmp_path / "converted")
    tokenizer = processor.tokenizer
    assert processor.image_seq_length == entry["num_image_token"]

    for case in entry["texts"]:
        assert tokenizer(case["text"]).input_ids == case["input_ids"], case["text"]
        if not re.search(r"<[|/]?[A-Za-z_|]+>", case["text"]):  # the original's decode spaces special tokens
            assert tokenizer.decode(case["input_ids"], skip_special_tokens=True) == case["decoded"], case["text"]
    chats = [case for case in entry["chats"] if case["template"] == "internvl2_5"]
    assert len(chats) == 6
    assert_chats_match(processor, chats)
    # chat() stops at <|im_end|>; so does the converted generation config
    eos = GenerationConfig.from_pretrained(tmp_path / "converted").eos_token_id
    assert {case["eos_token_id"] for case in entry["chats"]} <= set(eos if isinstance(eos, list) else [eos])


def test_checkpoints_with_the_hermes2_template_get_its_chat_template(parity_root, tmp_path):
    """A checkpoint fine-tuned from InternVL 2 keeps ``template: Hermes-2`` (no newline after ``<|im_end|>``, another
    default system message); the original chat() prompts are reproduced from the converted processor."""
    from transformers import AutoProcessor

    entry = fixture_entry("dummy_prefix")
    source = internlm2_release(parity_root, entry, tmp_path / "release", template="Hermes-2")
    assert convert_main(["internvl2_5", str(source), str(tmp_path / "converted")]) == 0
    chats = [case for case in entry["chats"] if case["template"] == "Hermes-2"]
    assert chats
    assert_chats_match(AutoProcessor.from_pretrained(tmp_path / "converted"), chats)
    # the original takes `system_message` from the config when it has one; unknown templates are reported
    from vistok.conversion.convert_internvl2_5 import build_processors

    tokenizer = AutoProcessor.from_pretrained(tmp_path / "converted").tokenizer
    messages = [{"role": "user", "content": "Hi"}]
    notes = []
    for template, expected in (
        ("Hermes-2", "<|im_start|>system\nBe brief.<|im_end|><|im_start|>user\nHi<|im_end|><|im_start|>assistant\n"),
        ("phi3-chat",  # not supported: written as internvl2_5, with a note
         "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
    ):
        processor = build_processors({"template": template, "system_message": "Be brief."}, {"image_size": 16, "patch_size": 4},
                                     tokenizer, 4, notes)[-1]
        assert processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == expected
    assert len(notes) == 1 and "phi3-chat" in notes[0]


def test_force_image_size_sets_the_tile_size_and_resizes_the_position_table(parity_root, tmp_path):
    """``force_image_size`` != the ViT's own size: the original tiles at force_image_size, counts
    int((force / patch)^2 * 0.25) tokens per tile and bicubic-resizes the position table to the tile's grid."""
    case = parity_cases(parity_root)[0]
    config = json.loads((case / "original" / "config.json").read_text())
    state = load_file(str(case / "original" / "model.safetensors"))
    patch = state["vision_model.embeddings.patch_embedding.weight"].shape[-1]
    table_grid = int((state["vision_model.embeddings.position_embedding"].shape[1] - 1) ** 0.5)
    force = (table_grid + 2) * patch  # 2 patches more per side than the table, still even
    source = tmp_path / "release"
    source.mkdir()
    (source / "config.json").write_text(json.dumps(config | {"force_image_size": force}))
    save_file(state, str(source / "model.safetensors"))
    assert convert_main(["internvl2_5", str(source), str(tmp_path / "converted")]) == 0

    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "converted").eval()
    assert model.config.image_seq_length == int((force / patch) ** 2 * 0.25)
    image_processor = AutoImageProcessor.from_pretrained(tmp_path / "converted", backend="pil")
    tiles = image_processor(Image.fromarray(np.full((30, 70, 3), 90, np.uint8)), return_tensors="pt")["pixel_values"]
    assert tiles.shape[-2:] == (force, force)
    pixels = torch.randn(1, 3, force, force, generator=torch.Generator().manual_seed(0))
    grid = force // patch
    table = state["vision_model.embeddings.position_embedding"]
    resized = torch.nn.functional.interpolate(
        table[:, 1:].reshape(1, table_grid, table_grid, -1).permute(0, 3, 1, 2), size=(grid, grid), mode="bicubic",
        align_corners=False).flatten(2).transpose(1, 2)
    patches = torch.nn.functional.conv2d(pixels, state["vision_model.embeddings.patch_embedding.weight"],
                                         state["vision_model.embeddings.patch_embedding.bias"], stride=patch)
    expected = torch.cat([state["vision_model.embeddings.class_embedding"] + table[:, :1],
                          patches.flatten(2).transpose(1, 2) + resized], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model.model.vision_tower.embeddings(pixels), expected, atol=1e-5, rtol=1e-5)
        assert model.model.get_image_features(pixel_values=pixels).pooler_output.shape[1] == (grid // 2) ** 2


def test_odd_patch_grid_is_refused(parity_root, tmp_path):
    """Pixel shuffle 0.5 needs an even patch grid (the original's reshape fails otherwise): a clear error."""
    case = parity_cases(parity_root)[0]
    config = json.loads((case / "original" / "config.json").read_text())
    patch = config["vision_config"]["patch_size"]
    source = tmp_path / "release"
    source.mkdir()
    (source / "config.json").write_text(json.dumps(config | {"force_image_size": 5 * patch}))
    (source / "model.safetensors").symlink_to(case / "original" / "model.safetensors")
    with pytest.raises(ConversionError, match="even number"):
        convert(source)


def test_use_thumbnail_false_tiles_without_the_thumbnail(parity_root, tmp_path):
    """``use_thumbnail: false``: the original's dynamic_preprocess returns the tiles only. A 30x50 image, 16 px tiles,
    at most 6: the closest grid to 50/30 among cols*rows <= 6 is 3x2 (ratio 1.5), so 6 tiles, no 7th."""
    case = parity_cases(parity_root)[0]
    config = json.loads((case / "original" / "config.json").read_text())
    tile = config.get("force_image_size") or config["vision_config"]["image_size"]
    source = tmp_path / "release"
    source.mkdir()
    (source / "config.json").write_text(json.dumps(config | {"use_thumbnail": False, "dynamic_image_size": True,
                                                                 "min_dynamic_patch": 1, "max_dynamic_patch": 6}))
    (source / "model.safetensors").symlink_to(case / "original" / "model.safetensors")
    assert convert_main(["internvl2_5", str(source), str(tmp_path / "converted")]) == 0
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30 * tile // 16, 50 * tile // 16, 3),
                                                              dtype=np.uint8))
    processor = AutoImageProcessor.from_pretrained(tmp_path / "converted", backend="pil")
    out = processor(image, return_tensors="pt")
    assert out["num_patches"].tolist() == [6] and out["pixel_values"].shape[0] == 6
    with_thumbnail = GotOcr2ImageProcessorPil(**{k: getattr(processor, k) for k in (
        "size", "crop_to_patches", "min_patches", "max_patches", "image_mean", "image_std")})(image, return_tensors="pt")
    assert torch.equal(out["pixel_values"], with_thumbnail["pixel_values"][:-1])  # same tiles, same order
    fast = AutoImageProcessor.from_pretrained(tmp_path / "converted")
    assert fast(image, return_tensors="pt")["num_patches"].tolist() == [6]
