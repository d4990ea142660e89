"""LLaVA-Mini: parity with the original code, conversion layouts, compression maths, batching and generation."""

import json
import shutil

import numpy as np
import pytest
import torch
import vistok
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageTextToText
from vistok import LlavaMiniConfig, LlavaMiniForConditionalGeneration
from vistok.conversion.__main__ import main as convert_main
from vistok.conversion.utils import ConversionError
from vistok.modeling.modeling_llava_mini import compressor_position_table
from vistok.processing.processing_llava_mini import expand_to_square

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


def expand_like_original(values: torch.Tensor, input_ids: torch.Tensor, per_placeholder: int, fill) -> torch.Tensor:
    """A per-token tensor in the original layout (one -200 per image or whole video) -> vistok's layout (one
    placeholder per vision token): each -200 position becomes `per_placeholder` copies of `fill`."""
    rows = []
    for value_row, id_row in zip(values.tolist(), input_ids.tolist()):
        rows.append([x for v, t in zip(value_row, id_row)
                     for x in ([fill] * per_placeholder if t == ORIGINAL_IMAGE_TOKEN else [v])])
    return torch.tensor(rows)


def _original_call(io, config):
    """vistok inputs equivalent to the original `images=` call of a case: (input_ids, pixel kwargs, placeholders per
    original -200)."""
    images = io["pixel_values"]
    if images.ndim == 6:  # (B, T, parts, 3, S, S): one video per sample
        per, token_id, pixels = images.shape[1] * config.num_vision_tokens, config.video_token_id, {
            "pixel_values_videos": images[:, :, 0] if images.shape[2] == 1 else images}
    else:
        per, token_id, pixels = config.num_vision_tokens, config.image_token_id, {
            "pixel_values": images[:, 0] if images.shape[1] == 1 else images}
    return expand_like_original(io["input_ids"], io["input_ids"], per, token_id), pixels, per


def assert_units_close(mine: torch.Tensor, expected: torch.Tensor) -> None:
    """`mine`: [U, ...] per image/frame. The original may have recorded all units or, for videos, one frame's worth
    (hooks keep the first or the last call)."""
    expected = expected.reshape(-1, *mine.shape[1:])
    if expected.shape[0] == mine.shape[0]:
        torch.testing.assert_close(mine, expected, **TOL)
        return
    k = expected.shape[0]
    first, last = (mine[:k] - expected).abs().max(), (mine[-k:] - expected).abs().max()
    assert min(first, last) <= 1e-4 + 1e-4 * expected.abs().max(), (first, last)


def test_parity_with_original(parity_root, tmp_path):
    for case in _cases(parity_root):
        io = load_file(str(case / "io.safetensors"))
        model = _convert(case / "original", tmp_path / case.name)
        assert isinstance(model, LlavaMiniForConditionalGeneration)
        ids, pixels, per = _original_call(io, model.config)
        attention_mask = io.get("attention_mask")
        if attention_mask is not None:
            attention_mask = expand_like_original(attention_mask, io["input_ids"], per, 1)
        with torch.no_grad():
            inputs_embeds, features = model.model.merge_multimodal_inputs(
                ids, attention_mask=attention_mask, return_patch_features=True, **pixels
            )
            logits = model(input_ids=ids, attention_mask=attention_mask, **pixels).logits
            if "clip_patch_features" in io:
                patches = features.last_hidden_state
                if io["clip_patch_features"].shape[-2] != patches.shape[-2]:  # per view (high-resolution crops)
                    views = next(iter(pixels.values())).flatten(0, -4)
                    hidden = model.model.vision_tower(views, output_hidden_states=True).hidden_states
                    patches = hidden[model.config.vision_feature_layer][:, 1:]
                assert_units_close(patches, io["clip_patch_features"])
        if "compressor_output" in io:
            assert_units_close(features.compressed_tokens, io["compressor_output"])
        if "compressed_tokens_projected" in io:
            with torch.no_grad():
                projected = model.model.multi_modal_projector(features.compressed_tokens)
            assert_units_close(projected, io["compressed_tokens_projected"])
        if "vision_tokens" in io:
            assert_units_close(features.pooler_output, io["vision_tokens"])
        # fused text at the original's text positions (ids > 0); vistok has C*C placeholders where it has one -200
        text = expand_like_original(io["input_ids"] > 0, io["input_ids"], per, False)
        torch.testing.assert_close(
            features.fused_text_states[text], io["fused_text_states"][io["input_ids"] > 0], **TOL
        )
        valid = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        torch.testing.assert_close(inputs_embeds[valid], io["inputs_embeds"][valid], **TOL)
        torch.testing.assert_close(logits[valid], io["logits"][valid], **TOL)

        # the CLIP preprocessing with the PIL backend reproduces the original pixels exactly
        if "image_uint8" in io and io["pixel_values"].ndim == 5:
            processor = AutoImageProcessor.from_pretrained(tmp_path / case.name, backend="pil")
            images = [Image.fromarray(image.numpy()) for image in io["image_uint8"]]
            pixel_values = processor(images, return_tensors="pt")["pixel_values"]
            expected = io["pixel_values"][:, 0] if io["pixel_values"].shape[1] == 1 else io["pixel_values"]
            torch.testing.assert_close(pixel_values, expected, atol=0, rtol=0)


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
    ids, pixels, per = _original_call(io, model.config)
    attention_mask = io.get("attention_mask")
    if attention_mask is not None:
        attention_mask = expand_like_original(attention_mask, io["input_ids"], per, 1)
    valid = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention_mask, **pixels).logits
    torch.testing.assert_close(logits[valid], io["logits"][valid], **TOL)  # padded positions are not compared


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



def test_expand_to_square_hand_values():
    """LLaVA's "pad" view: the image centred on its longer side (offset floor(diff / 2)), the rest filled."""
    wide = Image.fromarray(np.arange(2 * 5 * 3, dtype=np.uint8).reshape(2, 5, 3))  # h=2, w=5 -> 5x5, rows 1..2
    out = np.asarray(expand_to_square(wide, (7, 8, 9)))
    assert out.shape == (5, 5, 3)
    np.testing.assert_array_equal(out[1:3], np.asarray(wide))
    assert (out[[0, 3, 4]] == [7, 8, 9]).all()
    tall = Image.fromarray(np.full((4, 1, 3), 200, np.uint8))  # h=4, w=1 -> 4x4, column 1
    out = np.asarray(expand_to_square(tall, (1, 2, 3)))
    assert (out[:, 1] == 200).all() and (out[:, [0, 2, 3]] == [1, 2, 3]).all()
    assert expand_to_square(wide.crop((0, 0, 2, 2)), (0, 0, 0)).size == (2, 2)


def test_pad_aspect_ratio_converts_to_a_padding_image_processor(parity_root, tmp_path):
    """`image_aspect_ratio: "pad"` (LLaVA-style configs): the converted image processor pads every view with the
    CLIP mean colour first; "anyres" (not an input the compressor takes) is refused by name."""
    case = _cases(parity_root)[0]
    source = tmp_path / "release"
    shutil.copytree(case / "original", source)
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps(config | {"image_aspect_ratio": "pad"}))
    assert convert_main(["llava-mini", str(source), str(tmp_path / "pad")]) == 0
    processor = AutoImageProcessor.from_pretrained(tmp_path / "pad", backend="pil")
    assert processor.pad_to_square
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (23, 57, 3), dtype=np.uint8))
    fill = tuple(int(255 * m) for m in processor.image_mean)
    expected = processor(expand_to_square(image, fill), pad_to_square=False, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(processor(image, return_tensors="pt")["pixel_values"], expected, atol=0, rtol=0)
    (source / "config.json").write_text(json.dumps(config | {"image_aspect_ratio": "anyres"}))
    with pytest.raises(ConversionError, match="image_aspect_ratio 'anyres'"):
        vistok.conversion.__main__.convert("llava-mini", source, tmp_path / "anyres")


# ----- tiny models: batching, generation, high resolution, video -----

IMAGE, VIDEO = 300, 301  # placeholder ids outside the 256-token vocabulary


def tiny_config(**overrides) -> LlavaMiniConfig:
    fields = dict(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=24, patch_size=4, hidden_act="quick_gelu", initializer_range=0.2),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, initializer_range=0.2, rope_theta=10000.0,
                         pad_token_id=1),
        compressor_grid_size=2, num_prefusion_layers=2, image_token_id=IMAGE, video_token_id=VIDEO,
    )
    return LlavaMiniConfig(**(fields | overrides))


def tiny_model(seed=0, **overrides) -> LlavaMiniForConditionalGeneration:
    torch.manual_seed(seed)
    return LlavaMiniForConditionalGeneration(tiny_config(**overrides)).eval()


def _pixels(n, parts=None, size=24, seed=0):
    shape = (n, 3, size, size) if parts is None else (n, parts, 3, size, size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _left_pad(rows, pad_id=1):
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def test_mixed_batch_equals_items_one_by_one():
    model = tiny_model()
    img = [IMAGE] * 4
    prompts = [
        [5, 9, 33, 70],                               # text only
        [5, *img, 17, 18, 19, 20, 21],                # one image
        [5, 40, *img, 41, *img, 42, 43],              # two images
    ]
    images = [None, _pixels(1, seed=1), _pixels(2, seed=2)]
    ids, mask = _left_pad(prompts)
    batch_pixels = torch.cat([p for p in images if p is not None])
    with torch.no_grad():
        batch_logits = model(input_ids=ids, attention_mask=mask, pixel_values=batch_pixels).logits
        batch_generated = model.generate(input_ids=ids, attention_mask=mask, pixel_values=batch_pixels,
                                         max_new_tokens=6, do_sample=False)
        for i, (prompt, pixels) in enumerate(zip(prompts, images)):
            single = torch.tensor([prompt])
            logits = model(input_ids=single, pixel_values=pixels).logits
            torch.testing.assert_close(batch_logits[i, -len(prompt):], logits[0], atol=1e-5, rtol=1e-5)
            generated = model.generate(input_ids=single, pixel_values=pixels, max_new_tokens=6, do_sample=False)
            assert batch_generated[i, -6:].tolist() == generated[0, -6:].tolist()
    # the image changes the text states and the answer: a different image gives different logits
    with torch.no_grad():
        other = model(input_ids=torch.tensor([prompts[1]]), pixel_values=_pixels(1, seed=7)).logits
    assert (other[0] - batch_logits[1, -len(prompts[1]):]).abs().max() > 1e-3


def test_chunked_encoding_gives_the_same_results():
    """`vision_chunk_size` bounds memory for long videos; every chunking gives the same logits."""
    img, vid = [IMAGE] * 4, [VIDEO] * 4
    ids, mask = _left_pad([[5, *img, 6, *img, 7], [8, *vid * 3, 9, 10], [11, 12]])
    inputs = dict(input_ids=ids, attention_mask=mask, pixel_values=_pixels(2, seed=8),
                  pixel_values_videos=_pixels(3, seed=9)[None])
    with torch.no_grad():
        logits = {size: tiny_model(vision_chunk_size=size)(**inputs).logits for size in (None, 1, 2)}
    torch.testing.assert_close(logits[1], logits[None], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[2], logits[None], atol=1e-5, rtol=1e-5)


def test_vision_tokens_do_not_depend_on_the_prompt():
    """The compressed tokens precede the text in the causal pre-fusion, so the prompt cannot change them."""
    model = tiny_model()
    pixels = _pixels(2, seed=3)
    ids = torch.tensor([[5, *[IMAGE] * 4, 7, 8], [9, 9, 9, *[IMAGE] * 4]])
    with torch.no_grad():
        alone = model.get_image_features(pixels).pooler_output
        with_text = model.get_image_features(pixels, input_ids=ids)
    torch.testing.assert_close(alone, with_text.pooler_output, atol=1e-5, rtol=1e-5)
    assert with_text.fused_text_states.shape == (2, 7, 32)


def test_token_id_zero_is_text_unlike_the_original():
    """The original treats every id <= 0 as padding in the pre-fusion (so a real token 0 stays unfused); vistok masks
    only placeholders and attention_mask padding."""
    model = tiny_model()
    ids = torch.tensor([[5, *[IMAGE] * 4, 0, 8]])
    with torch.no_grad():
        fused = model.get_image_features(_pixels(1), input_ids=ids).fused_text_states
        plain = model.model.embed_text(ids)
    assert (fused[0, 5] - plain[0, 5]).abs().max() > 1e-3  # id 0 was fused with the image
    torch.testing.assert_close(fused[0, 1:5], plain[0, 1:5])  # placeholders keep the plain embedding


def test_high_resolution_stitches_crops_row_major():
    model = tiny_model(resolution_ratio=2)
    pixels = _pixels(1, parts=5, seed=4)  # 4 crops + the whole image
    with torch.no_grad():
        features = model.get_image_features(pixels)
        per_view = model.model.vision_tower(pixels[0], output_hidden_states=True).hidden_states[-2][:, 1:]
    g = 6  # 24 px / 4 px patches
    stitched = torch.empty(2 * g, 2 * g, 32)
    for row in range(2 * g):
        for col in range(2 * g):
            crop = (row // g) * 2 + col // g
            stitched[row, col] = per_view[crop, (row % g) * g + col % g]
    torch.testing.assert_close(features.last_hidden_state[0], stitched.reshape(-1, 32))
    assert features.pooler_output.shape == (1, 4, 32)
    with pytest.raises(ValueError, match="needs 5 views"):
        model.get_image_features(_pixels(1))


def test_video_concatenates_frames_and_averages_text():
    model = tiny_model()
    frames = _pixels(3, seed=5)
    text = [5, 6, 7]
    video_ids = torch.tensor([[5, *[VIDEO] * 12, 6, 7]])
    with torch.no_grad():
        out = model(input_ids=video_ids, pixel_values_videos=frames[None])
        video = out.video_outputs
        per_frame = [model.get_image_features(frames[t : t + 1], input_ids=torch.tensor([[5, *[IMAGE] * 4, 6, 7]]))
                     for t in range(3)]
        mean_text = torch.stack([f.fused_text_states for f in per_frame]).mean(0)
        torch.testing.assert_close(video.pooler_output, torch.cat([f.pooler_output for f in per_frame]))
        keep = torch.tensor([True, False, False, False, False, True, True])
        torch.testing.assert_close(video.fused_text_states[0, [0, 13, 14]], mean_text[0, keep], atol=1e-5, rtol=1e-5)
        # the language model sees [fused text, 3 x C*C frame tokens, fused text]
        embeds = torch.cat([mean_text[0, :1], video.pooler_output.reshape(12, 32), mean_text[0, 5:]])[None]
        logits = model.lm_head(model.model.language_model(inputs_embeds=embeds).last_hidden_state)
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=1e-5)
    assert len(text) + 12 == out.logits.shape[1]


def test_bad_inputs_raise_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="placeholders for 1 images but 2 were given"):
        model(input_ids=torch.tensor([[5, *[IMAGE] * 4]]), pixel_values=_pixels(2))
    with pytest.raises(ValueError, match="must occupy 4 placeholder tokens"):
        model(input_ids=torch.tensor([[5, *[IMAGE] * 3]]), pixel_values=_pixels(1))
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=torch.tensor([[5, *[IMAGE] * 4]]))


def test_save_load_round_trip(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    loaded, info = AutoModelForImageTextToText.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info
    ids = torch.tensor([[5, *[IMAGE] * 4, 7]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(input_ids=ids, pixel_values=_pixels(1)).logits,
                                   model(input_ids=ids, pixel_values=_pixels(1)).logits)
    assert isinstance(AutoModel.from_pretrained(tmp_path), vistok.LlavaMiniModel)


def test_generated_tokens_and_answers_stay_out_of_the_prefusion():
    """The original fuses only the prompt at generation and masks answer tokens (labels != -100) in training."""
    model = tiny_model()
    prompt = [5, *[IMAGE] * 4, 7, 8]
    full = torch.tensor([prompt + [30, 31]])
    pixels = _pixels(1)
    with torch.no_grad():
        plain_tail = model(input_ids=full, pixel_values=pixels, fusion_mask=torch.ones(1, len(prompt))).logits
        fused_all = model(input_ids=full, pixel_values=pixels).logits
        prompt_only = model(input_ids=torch.tensor([prompt]), pixel_values=pixels).logits
        # the LLM input of the appended tokens is their plain embedding: by hand
        merged, _ = model.model.merge_multimodal_inputs(torch.tensor([prompt]), pixels)
        embeds = torch.cat([merged, model.model.embed_text(torch.tensor([[30, 31]]))], dim=1)
        by_hand = model.lm_head(model.model.language_model(inputs_embeds=embeds).last_hidden_state)
        labels = torch.tensor([[-100] * len(prompt) + [30, 31]])
        with_labels = model(input_ids=full, pixel_values=pixels, labels=labels)
    torch.testing.assert_close(plain_tail, by_hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain_tail[:, : len(prompt)], prompt_only, atol=1e-5, rtol=1e-5)
    assert (fused_all[0, -1] - plain_tail[0, -1]).abs().max() > 1e-4
    torch.testing.assert_close(with_labels.logits, plain_tail, atol=1e-5, rtol=1e-5)
    expected_loss = torch.nn.functional.cross_entropy(plain_tail[0, len(prompt) - 1 : -1], torch.tensor([30, 31]))
    torch.testing.assert_close(with_labels.loss, expected_loss, atol=1e-5, rtol=1e-5)


# ----- processors -----


def test_one_frame_per_second_sampling_hand_values():
    from transformers.video_utils import VideoMetadata
    from vistok.processing.processing_llava_mini import one_frame_per_second

    # 10 frames at 4 fps -> int(2.5) = 2 frames; segments of 4.5: bounds (0, 4) and (4, 9) (numpy rounds 4.5 to 4)
    assert one_frame_per_second(VideoMetadata(total_num_frames=10, fps=4.0)).tolist() == [2, 6]
    # 4 frames at 1 fps: the original's segment middles repeat frame 2 and skip frame 3
    assert one_frame_per_second(VideoMetadata(total_num_frames=4, fps=1.0)).tolist() == [0, 1, 2, 2]
    # 90 frames at 30 fps -> 3 frames, segments of 89/3: bounds 0, 30, 59, 89
    assert one_frame_per_second(VideoMetadata(total_num_frames=90, fps=30.0)).tolist() == [15, 44, 74]
    # shorter than a second: one frame; unknown fps: the frames are taken as already sampled
    assert one_frame_per_second(VideoMetadata(total_num_frames=5, fps=30.0)).tolist() == [2]
    assert one_frame_per_second(VideoMetadata(total_num_frames=3, fps=None)).tolist() == [0, 1, 2]


def test_split_image_crops_row_major_then_whole():
    from vistok.processing.processing_llava_mini import split_image

    array = np.arange(7 * 9 * 3, dtype=np.uint8).reshape(7, 9, 3)
    views = split_image(Image.fromarray(array), 2)
    assert len(views) == 5 and np.array_equal(np.asarray(views[-1]), array)
    # 9 x 7 image, ratio 2: crops of 4 x 3 px at x = 0, 4 and y = 0, 3 (the last column and row are dropped)
    np.testing.assert_array_equal(np.asarray(views[0]), array[0:3, 0:4])
    np.testing.assert_array_equal(np.asarray(views[1]), array[0:3, 4:8])
    np.testing.assert_array_equal(np.asarray(views[2]), array[3:6, 0:4])
    np.testing.assert_array_equal(np.asarray(views[3]), array[3:6, 4:8])


def _rgb(height, width, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_image_processors_pil_exact_and_torchvision_close():
    from transformers import CLIPImageProcessorPil
    from vistok import LlavaMiniImageProcessor, LlavaMiniImageProcessorPil

    sizes = dict(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
    images = [_rgb(30, 44), _rgb(52, 26, seed=1)]
    reference = CLIPImageProcessorPil(**sizes)(images, return_tensors="pt")["pixel_values"]
    pil = LlavaMiniImageProcessorPil(**sizes)(images, return_tensors="pt")["pixel_values"]
    fast = LlavaMiniImageProcessor(**sizes)(images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pil, reference, atol=0, rtol=0)
    assert pil.shape == (2, 3, 24, 24) and (fast - pil).abs().max() < 0.05
    # high resolution: each image -> 4 crops + the whole image, each processed like an image
    high = LlavaMiniImageProcessorPil(**sizes, resolution_ratio=2)(images, return_tensors="pt")["pixel_values"]
    assert high.shape == (2, 5, 3, 24, 24)
    torch.testing.assert_close(high[:, -1], reference)
    crop = CLIPImageProcessorPil(**sizes)(images[0].crop((22, 15, 44, 30)), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(high[0, 3], crop[0])


def test_processor_expands_placeholders_and_renders_the_chat(tmp_path):
    from mm_testers.llava_mini import LlavaMiniTester

    tester = LlavaMiniTester()
    processor = tester.get_processor()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n\nYou are a helpful language and vision assistant. You are able to understand the "
        "visual content that the user provides, and assist the user with a variety of tasks using natural language."
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is it?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    video = tester.make_video(num_frames=6)
    from transformers.video_utils import VideoMetadata

    out = processor(text=["<image><image> and <video>", "<image>"], images=[_rgb(30, 44), _rgb(20, 20), _rgb(24, 24)],
                    videos=[video], padding=True, return_tensors="pt",
                    videos_kwargs={"video_metadata": [VideoMetadata(total_num_frames=6, fps=2.0)]})
    image_id, video_id = processor.image_token_id, processor.video_token_id
    assert (out["input_ids"] == image_id).sum(-1).tolist() == [8, 4]
    assert (out["input_ids"] == video_id).sum(-1).tolist() == [12, 0]  # 6 frames at 2 fps -> 3 frames x 4 tokens
    assert out["pixel_values"].shape == (3, 3, 24, 24) and out["pixel_values_videos"].shape == (1, 3, 3, 24, 24)
    assert torch.equal(out["fusion_mask"], out["attention_mask"])
    # frames 1, 2, 4 (segments of 5/3: bounds 0, 2, 3, 5), resized to 24 x 24 with nearest-neighbour interpolation
    # before the CLIP steps, as the original does
    frames = torch.from_numpy(video[[1, 2, 4]]).permute(0, 3, 1, 2).float()
    nearest = torch.nn.functional.interpolate(frames, size=(24, 24)).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    from transformers import CLIPImageProcessorPil

    expected = CLIPImageProcessorPil(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})(
        [Image.fromarray(f) for f in nearest], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(out["pixel_values_videos"][0], expected, atol=0, rtol=0)
    processor.save_pretrained(tmp_path)
    reloaded = tester.reload_processor(tmp_path)
    assert reloaded.num_vision_tokens == 4 and reloaded.chat_template == processor.chat_template


def test_new_user_converts_a_release_and_runs_the_pipeline(parity_root, tmp_path):
    """SOURCE with tokenizer files: the converter adds the placeholder tokens and saves a full LlavaMiniProcessor;
    `pipeline("image-text-to-text")` then answers chat messages with an image and with a video file."""
    from mm_testers import make_char_tokenizer, write_video
    from transformers import AutoProcessor, pipeline

    case = _cases(parity_root)[0]
    source = tmp_path / "release"
    shutil.copytree(case / "original", source)
    vocab_size = json.loads((source / "config.json").read_text())["vocab_size"]
    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|endoftext|>"]
    tokenizer = make_char_tokenizer(vocab_size, {vocab_size - 1 - i: t for i, t in enumerate(specials)},
                                    bos_token="<|begin_of_text|>")
    tokenizer.save_pretrained(source)
    model = _convert(source, tmp_path / "converted")
    processor = AutoProcessor.from_pretrained(tmp_path / "converted")
    config = model.config
    assert isinstance(processor, vistok.LlavaMiniProcessor) and processor.num_vision_tokens == config.num_vision_tokens
    assert (processor.image_token_id, processor.video_token_id) == (config.image_token_id, config.video_token_id)
    assert processor.tokenizer.padding_side == "left" and config.image_token_id >= vocab_size

    io = load_file(str(case / "io.safetensors"))
    image = Image.fromarray(io["image_uint8"][0].numpy())
    pipe = pipeline("image-text-to-text", model=str(tmp_path / "converted"))
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Hi"}]}]
    answer = pipe(text=messages, max_new_tokens=4, do_sample=False, return_full_text=False)[0]["generated_text"]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    assert (inputs["input_ids"] == config.image_token_id).sum() == config.num_vision_tokens
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert answer == processor.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    video = np.random.default_rng(0).integers(0, 256, (3, 40, 52, 3), dtype=np.uint8)
    write_video(tmp_path / "clip.mp4", video, fps=1)
    messages = [{"role": "user", "content": [{"type": "video", "path": str(tmp_path / "clip.mp4")},
                                             {"type": "text", "text": "Hi"}]}]
    out = pipe(text=messages, max_new_tokens=4, do_sample=False, return_full_text=False)
    assert isinstance(out[0]["generated_text"], str)
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    # 3 s at 1 frame/s -> frames 0, 1, 1 (the original's segment middles), C*C tokens each
    assert (inputs["input_ids"] == config.video_token_id).sum() == 3 * config.num_vision_tokens
