"""VideoLLaMA3: conversion of the original releases into transformers' ``VideoLlama3ForConditionalGeneration``.

Parity: every case under ``parity_root/videollama3/`` is converted through the CLI entry point, reloaded with the Auto
classes and compared with the original code's outputs: image and video pixel values and grids, the DiffFP mask and
kept-token indices (exact), the ids the LLM sees after pruning (exact), vision-encoder outputs, projected features and
image / video logits (1e-4). Shared model checks run in ``test_common_multimodal.py`` via ``mm_testers/videollama3.py``.
"""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoVideoProcessor

import vistok  # noqa: F401
from vistok.conversion.__main__ import main as convert_main


def parity_cases(parity_root):
    cases = sorted(p for p in (parity_root / "videollama3").iterdir() if (p / "original").is_dir())
    if not cases:
        pytest.skip("no videollama3 parity cases")
    return cases


def assert_close(name, got, expected, diffs):
    got, expected = got.detach().float(), expected.float()
    assert got.shape == expected.shape, f"{name}: {tuple(got.shape)} vs {tuple(expected.shape)}"
    diffs[name] = (got - expected).abs().max().item()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_parity_with_the_original_code(parity_root, tmp_path):
    report = {}
    for case in parity_cases(parity_root):
        dest = tmp_path / case.name
        assert convert_main(["videollama3", str(case / "original"), str(dest)]) == 0
        io = load_file(str(case / "io.safetensors"))
        with safe_open(str(case / "io.safetensors"), "pt") as handle:
            meta = handle.metadata()
        model, info = AutoModelForImageTextToText.from_pretrained(dest, output_loading_info=True)
        assert all(not v for v in info.values()), info
        model.eval()
        original_image_token = int(meta["image_token_index"])
        assert model.config.image_token_id == original_image_token
        diffs = {}

        # image: processor (exact) -> vision encoder -> projector -> logits
        image_processor = AutoImageProcessor.from_pretrained(dest, backend="pil")
        image = image_processor(io["image_raw"].permute(2, 0, 1), return_tensors="pt")
        assert torch.equal(image["pixel_values"], io["image_pixel_values"])
        assert torch.equal(image["image_grid_thw"], io["image_grid_sizes"])
        assert torch.equal(image["image_merge_sizes"], io["image_merge_sizes"])
        with torch.no_grad():
            features = model.model.get_image_features(
                pixel_values=image["pixel_values"], image_grid_thw=image["image_grid_thw"],
                image_merge_sizes=image["image_merge_sizes"])
            assert_close("image_vision_encoder_output", features.last_hidden_state,
                         io["image_vision_encoder_output"], diffs)
            assert_close("image_mm_features", torch.cat(features.pooler_output), io["image_mm_features"], diffs)
            input_ids = io["image_input_ids"]
            logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **image).logits
            assert_close("image_logits", logits, io["image_logits"], diffs)

        # video: processor (pixels, grid, DiffFP mask exact) -> features -> logits over the pruned sequence
        video_processor = AutoVideoProcessor.from_pretrained(dest)
        # the fixture's frames are already sampled (1 fps in the original `load_video`)
        video = video_processor(videos=[io["video_raw"].numpy()], do_sample_frames=False, return_tensors="pt")
        # the torchvision video backend fuses rescale and normalise: equal up to float rounding (~6e-8)
        assert_close("video_pixel_values", video["pixel_values_videos"], io["video_pixel_values"], diffs)
        assert diffs["video_pixel_values"] < 1e-6
        assert torch.equal(video["video_grid_thw"], io["video_grid_sizes"])
        assert torch.equal(video["video_merge_sizes"], io["video_merge_sizes"])
        mask = video["video_compression_mask"]
        assert torch.equal(mask, io["video_compression_mask"])
        assert torch.equal(mask.nonzero().flatten(), io["video_kept_token_indices"])
        # the ids the LLM sees: the full prompt with the pruned placeholders removed
        full_ids = io["video_input_ids"][0]
        placeholder = (full_ids == original_image_token).nonzero().flatten()
        keep = torch.ones_like(full_ids, dtype=torch.bool)
        keep[placeholder[~mask]] = False
        assert torch.equal(full_ids[keep][None], io["video_input_ids_compressed"])

        input_ids = io["video_input_ids_compressed"].clone()
        input_ids[input_ids == original_image_token] = model.config.video_token_id  # the converted video token
        with torch.no_grad():
            features = model.model.get_video_features(
                pixel_values_videos=video["pixel_values_videos"], video_grid_thw=video["video_grid_thw"],
                video_merge_sizes=video["video_merge_sizes"])
            assert_close("video_vision_encoder_output", features.last_hidden_state,
                         io["video_vision_encoder_output"], diffs)
            assert_close("video_mm_features", torch.cat(features.pooler_output), io["video_mm_features"], diffs)
            logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **video).logits
            assert_close("video_logits", logits, io["video_logits"], diffs)
        report[case.name] = diffs
    print("VideoLLaMA3 parity max abs diffs:", json.dumps(report, indent=1))


def test_tied_head_checkpoint_converts_without_lm_head(parity_root, tmp_path):
    from safetensors.torch import save_file

    case = parity_cases(parity_root)[0]
    state = load_file(str(case / "original" / "model.safetensors"))
    del state["lm_head.weight"]
    source = tmp_path / "tied"
    source.mkdir()
    config = json.loads((case / "original" / "config.json").read_text()) | {"tie_word_embeddings": True}
    (source / "config.json").write_text(json.dumps(config))
    save_file(state, str(source / "model.safetensors"))
    assert convert_main(["videollama3", str(source), str(tmp_path / "out")]) == 0
    model, info = AutoModelForImageTextToText.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert all(not v for v in info.values()), info
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    assert torch.equal(model.lm_head.weight, state["model.embed_tokens.weight"])


def test_video_token_override(parity_root, tmp_path):
    case = parity_cases(parity_root)[0]
    overrides = tmp_path / "presets.json"
    overrides.write_text(json.dumps({"videollama3": {"video_token_id": 150}}))
    assert convert_main(["videollama3", str(case / "original"), str(tmp_path / "out"),
                         "--preset-overrides", str(overrides)]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["image_token_id"], config["video_token_id"]) == (159, 150)


def test_new_user_pipeline_on_an_image_and_a_video_file(parity_root, tmp_path):
    """Convert a release that ships tokenizer files (<image> at the case's id, Qwen's <|video_pad|>), then use only
    the pipeline, like a new user."""
    import numpy as np
    from PIL import Image
    from transformers import AutoProcessor, pipeline

    from mm_testers import answer_by_hand, make_char_tokenizer, write_video

    case = parity_cases(parity_root)[0]
    original = json.loads((case / "original" / "config.json").read_text())
    source = tmp_path / "release"
    source.mkdir()
    for path in (case / "original").iterdir():
        (source / path.name).write_bytes(path.read_bytes())
    special = {original["image_token_index"]: "<image>", 140: "<|video_pad|>", 150: "<|endoftext|>",
               151: "<|im_start|>", 152: "<|im_end|>"}
    make_char_tokenizer(original["vocab_size"], special).save_pretrained(source)
    dest = tmp_path / "converted"
    assert convert_main(["videollama3", str(source), str(dest)]) == 0
    config = json.loads((dest / "config.json").read_text())
    assert (config["image_token_id"], config["video_token_id"]) == (original["image_token_index"], 140)

    processor = AutoProcessor.from_pretrained(dest)
    model = AutoModelForImageTextToText.from_pretrained(dest).eval()
    pipe = pipeline("image-text-to-text", model=str(dest))
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (22, 30, 3), dtype=np.uint8))
    video_path = tmp_path / "clip.mp4"
    write_video(video_path, rng.integers(0, 256, (4, 16, 24, 3), dtype=np.uint8))
    # like the original: 1 frame per second of the 4 s clip
    assert processor.video_processor(videos=[str(video_path)], return_tensors="pt")["video_grid_thw"][0, 0] == 4
    for part, media in (({"type": "image", "image": image}, {"images": [image]}),
                        ({"type": "video", "path": str(video_path)}, {"videos": [str(video_path)]})):
        messages = [{"role": "user", "content": [part, {"type": "text", "text": "Describe it."}]}]
        answer = pipe(text=messages, max_new_tokens=4, do_sample=False, return_full_text=False)[0]["generated_text"]
        assert answer == answer_by_hand(model, processor, messages, 4, **media)


# -- vistok's checking subclasses (modeling/modeling_video_llama_3.py) ------------------------------------------------
def tiny_videollama3():
    """The shared tiny VideoLLaMA3 tester (patch 4: 48 values per patch; images at merge 1, videos at merge 2)."""
    from mm_testers.videollama3 import TESTERS

    return TESTERS[0]


def image_and_video_inputs(tester):
    processor = tester.get_processor()
    image = tester.example_inputs(processor, num_images=1)
    prompt = tester.build_prompt(processor, num_videos=1)
    video = tester.prepare_inputs(processor, [prompt], videos=[tester.make_video(num_frames=4)])
    assert not video["video_compression_mask"].all()  # DiffFP pruned some tokens
    return dict(image), dict(video)


def test_checked_classes_compute_what_transformers_computes():
    """Same weights -> the same logits as transformers' own classes, bit for bit, for an image, a video (with DiffFP
    pruning) and patches given as [N, 3, p, p] instead of [N, 3 * p * p] (the original and transformers only view the
    pixels as patches, so any shape with the right number of values is accepted)."""
    from transformers import VideoLlama3ForConditionalGeneration as Plain
    from transformers import VideoLlama3Model as PlainModel

    from mm_testers import with_the_same_weights
    from vistok.modeling.modeling_video_llama_3 import VideoLlama3ForConditionalGeneration as Checked
    from vistok.modeling.modeling_video_llama_3 import VideoLlama3Model as CheckedModel

    tester = tiny_videollama3()
    config = tester.get_config()
    checked, plain = with_the_same_weights(Checked, Plain, config)
    assert isinstance(checked.model, CheckedModel)
    image, video = image_and_video_inputs(tester)
    as_patches = image | {"pixel_values": image["pixel_values"].view(-1, 3, 4, 4)}
    with torch.no_grad():
        for inputs in (image, video, as_patches):
            assert torch.equal(checked(**inputs).logits, plain(**inputs).logits)
        assert torch.equal(checked(**as_patches).logits, checked(**image).logits)
        checked_base, plain_base = with_the_same_weights(CheckedModel, PlainModel, config)
        assert torch.equal(checked_base(**video).last_hidden_state, plain_base(**video).last_hidden_state)


def test_patches_that_disagree_with_the_grid_raise_a_value_error_naming_expected_and_got():
    tester = tiny_videollama3()
    model = AutoModelForImageTextToText.from_config(tester.get_config()).eval()
    image, video = image_and_video_inputs(tester)
    (t, h, w), = image["image_grid_thw"].tolist()
    num_patches = t * h * w
    bad_image = image | {"pixel_values": image["pixel_values"][:, :-2]}
    bad_video = video | {"pixel_values_videos": video["pixel_values_videos"][1:]}
    video_patches = int(video["video_grid_thw"].prod())
    cases = [
        (bad_image, f"expected shape ({num_patches}, 48), got shape ({num_patches}, 46)", "pixel_values must hold"),
        (bad_video, f"expected shape ({video_patches}, 48), got shape ({video_patches - 1}, 48)",
         "pixel_values_videos must hold"),
        (image | {"image_merge_sizes": torch.tensor([3])}, f"a {h} x {w} patch grid with merge size 3",
         "image_grid_thw must be divisible by its merge size in image_merge_sizes"),
        (image | {"image_grid_thw": image["image_grid_thw"][0]}, "got shapes (3,) and (1,)", "[num_items, 3]"),
    ]
    for inputs, expected_and_got, names in cases:
        for call in (model, model.model):
            with pytest.raises(ValueError) as error:
                call(**inputs)
            assert expected_and_got in str(error.value) and names in str(error.value), str(error.value)
    with pytest.raises(ValueError, match="pixel_values need image_grid_thw and image_merge_sizes"):
        model.get_image_features(image["pixel_values"], image_grid_thw=None)
