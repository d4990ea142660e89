"""Ola: parity with the original code through `vistok-convert` + the Auto classes for every fixture case, the
in-package Kaldi filterbank, conversion errors, preprocessing, prompt-order placeholder filling, batching and
generation."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from mm_testers.ola import OlaTester
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoModelForMultimodalLM

import vistok
import vistok.conversion.convert_ola
from vistok.conversion.__main__ import main as convert_main
from vistok.conversion.utils import ConversionError
from vistok.modeling.modeling_beats import relative_position_bucket
from vistok.processing.feature_extraction_ola import OlaFeatureExtractor, kaldi_fbank
from vistok.processing.image_processing_ola import OlaImageProcessor, patchify
from vistok.processing.streaming import SentenceStreamer


ATOL = RTOL = 1e-4
IMAGE_PLACEHOLDER, SPEECH_PLACEHOLDER = -300, -200


def _cases(parity_root):
    root = parity_root / "ola"
    cases = sorted(p for p in root.iterdir() if (p / "io.safetensors").is_file()) if root.is_dir() else []
    if not cases:
        pytest.skip(f"no Ola parity cases under {root}")
    return cases


@pytest.fixture(scope="module")
def converted(parity_root, tmp_path_factory):
    """{case name: (case dir, converted dir)} for every case, converted once through the CLI."""
    out = {}
    for case_dir in _cases(parity_root):
        dest = tmp_path_factory.mktemp("ola") / case_dir.name
        args = ["ola", str(case_dir / "original"), str(dest)]
        if (case_dir / "presets.json").is_file():
            args += ["--preset-overrides", str(case_dir / "presets.json")]
        assert convert_main(args) == 0
        out[case_dir.name] = (case_dir, dest)
    return out


def _image_items(io):
    """Per image: (high-res patches, grid, low-res patches, grid) from the fixture's views ([B, 1, 3, H, W] each)."""
    items = []
    for high, low in zip(io["pixel_values_highres"], io["pixel_values_lowres"]):
        items.append((*patchify(high[0], 16), *patchify(low[0], 16)))
    return items


def _pack_images(items):
    if not items:
        return {}
    high, high_grid, low, low_grid = zip(*items)
    return {"pixel_values": torch.cat(high), "image_grid_hw": torch.tensor(high_grid),
            "pixel_values_lowres": torch.cat(low), "image_grid_hw_lowres": torch.tensor(low_grid)}


def _audio_items(io):
    """Per clip: (Whisper mel [n, 128, 3000] from the fixture, BEATs filterbank [n, frames, 128] from the raw audio)."""
    mel = io["mel_features"].transpose(1, 2)
    chunks = io["speech_chunks"].tolist() if "speech_chunks" in io else [mel.shape[0]]
    waveforms = [io["waveform"]] if io["waveform"].ndim == 1 else list(io["waveform"])
    extractor = OlaFeatureExtractor(feature_size=mel.shape[1])
    beats = [extractor([w.numpy()], sampling_rate=16000)["beats_features"] for w in waveforms]
    return [(m, b) for m, b in zip(mel.split(chunks), beats)]


def _pack_audio(items):
    if not items:
        return {}
    return {"input_features": torch.cat([m for m, _ in items]), "beats_features": torch.cat([b for _, b in items]),
            "audio_chunks": torch.tensor([m.shape[0] for m, _ in items])}


def _original_layout(io, config, image_counts, audio_counts):
    """The fixture's prompt as the original fills it, written with our placeholder runs.

    The original drops padding (attention mask), then gives the k-th placeholder of a row (whatever its id, -300 image
    or -200 speech) an image if k < the row's number of -300 placeholders, else a speech clip; items are consumed in
    order over the batch, and a row without -300 (-200) placeholders skips one image (clip). Returns the
    right-padded ids, their attention mask, and the images and clips used, in order."""
    input_ids = io["input_ids"]
    mask = io["attention_mask"].bool() if "attention_mask" in io else torch.ones_like(input_ids, dtype=torch.bool)
    rows, used_images, used_clips = [], [], []
    next_image = next_clip = 0
    for ids, keep in zip(input_ids, mask):
        ids = ids[keep].tolist()
        num_images = sum(t == IMAGE_PLACEHOLDER for t in ids)
        num_speech = sum(t == SPEECH_PLACEHOLDER for t in ids)
        row, k = [], 0
        for token in ids:
            if token not in (IMAGE_PLACEHOLDER, SPEECH_PLACEHOLDER):
                row.append(token)
                continue
            if k < num_images:
                row += [config.image_token_id] * image_counts[next_image]
                used_images.append(next_image)
                next_image += 1
            else:
                row += [config.audio_token_id] * audio_counts[next_clip]
                used_clips.append(next_clip)
                next_clip += 1
            k += 1
        next_image += num_images == 0
        next_clip += num_speech == 0
        rows.append(row)
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, attention, used_images, used_clips


def test_parity(converted):
    for name, (case_dir, dest) in converted.items():
        io = load_file(case_dir / "io.safetensors")
        model, info = AutoModelForImageTextToText.from_pretrained(dest, output_loading_info=True)
        assert isinstance(model, vistok.OlaForConditionalGeneration) and not any(info.values()), (name, info)
        assert type(AutoModelForMultimodalLM.from_pretrained(dest)) is vistok.OlaForConditionalGeneration
        model.eval()
        image_items, audio_items = _image_items(io), _audio_items(io)
        images, audio = _pack_images(image_items), _pack_audio(audio_items)
        waveform = io["waveform"].reshape(-1).numpy() if io["waveform"].ndim == 1 else io["waveform"][0].numpy()
        extracted = OlaFeatureExtractor(feature_size=io["mel_features"].shape[-1])(waveform, sampling_rate=16000)
        torch.testing.assert_close(extracted["input_features"], audio_items[0][0], atol=ATOL, rtol=RTOL)
        with torch.no_grad():
            vision = model.model.vision_tower
            for view, suffix in (("highres", ""), ("lowres", "_lowres")):
                features = vision(images[f"pixel_values{suffix}"], images[f"image_grid_hw{suffix}"]).last_hidden_state
                expected = io[f"vision_features_{view}"]
                torch.testing.assert_close(features, expected.reshape(-1, expected.shape[-1]), atol=ATOL, rtol=RTOL)
            image_tokens = model.get_image_features(**images)
            expected = io["image_tokens"]
            torch.testing.assert_close(torch.cat(image_tokens), expected.reshape(-1, expected.shape[-1]),
                                       atol=ATOL, rtol=RTOL)
            whisper = model.model.audio_tower(audio["input_features"]).last_hidden_state
            torch.testing.assert_close(whisper, io["whisper_features"], atol=ATOL, rtol=RTOL)
            beats = model.model.beats_tower(audio["beats_features"]).last_hidden_state
            torch.testing.assert_close(beats, io["beats_features"], atol=ATOL, rtol=RTOL)
            speech = model.get_audio_features(**audio)
            expected = io["speech_tokens"]
            torch.testing.assert_close(torch.cat(speech), expected.reshape(-1, expected.shape[-1]), atol=ATOL, rtol=RTOL)
            input_ids, attention_mask, used_images, used_clips = _original_layout(
                io, model.config, [len(t) for t in image_tokens], [len(t) for t in speech]
            )
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
                      **_pack_images([image_items[i] for i in used_images]),
                      **_pack_audio([audio_items[i] for i in used_clips])}
            original = json.loads((case_dir / "original" / "config.json").read_text())
            left = original.get("tokenizer_padding_side", "right") == "left"
            for implementation in ("sdpa", "eager"):
                model.set_attn_implementation(implementation)
                logits = model(**inputs).logits
                for row, length in enumerate(attention_mask.sum(1).tolist()):
                    expected = io["logits"][row, -length:] if left else io["logits"][row, :length]
                    torch.testing.assert_close(logits[row, :length], expected, atol=ATOL, rtol=RTOL)


def test_beats_fbank_matches_kaldi(parity_root):
    """The in-package Kaldi filterbank against the original BEATs preprocessing (torchaudio's kaldi.fbank copy)."""
    for case_dir in _cases(parity_root):
        io = load_file(case_dir / "io.safetensors")
        features = OlaFeatureExtractor()(io["waveform"].numpy(), sampling_rate=16000)["beats_features"][0]
        head = io["beats_fbank_head"][0]
        assert features.shape == (1 + (480000 - 400) // 160, 128)
        torch.testing.assert_close(features[: head.shape[0]], head, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(features[-1], io["beats_fbank_silence_row"], atol=ATOL, rtol=RTOL)


def test_image_views_match_original(parity_root):
    for case_dir in _cases(parity_root):
        io = load_file(case_dir / "io.safetensors")
        low_h, low_w = io["pixel_values_lowres"].shape[-2:]
        # the fixture's LOWRES_RESIZE is not recorded in the tensors: take the base size that gives its shape
        raw = io["image_uint8"].numpy()
        images = list(raw) if raw.ndim == 4 else [raw]  # [B, H, W, 3] for batched cases
        lowres_size = next(
            s for s in range(32, 4096, 32)
            if OlaImageProcessor(lowres_size=s).views(images[0])[1].size == (low_w, low_h)
        )
        out = OlaImageProcessor(lowres_size=lowres_size)(images=images)
        expected = _pack_images(_image_items(io))
        for key, value in expected.items():
            torch.testing.assert_close(out[key], value, atol=0, rtol=0)


# -- tiny-model behaviour (the shared multimodal runners cover save/load, offload, dtypes, LoRA, image batching) ----


@pytest.fixture(scope="module")
def tiny():
    tester = OlaTester()
    return tester, tester.make_model(), tester.get_processor()


def _messages(*parts, question="Answer."):
    return [{"role": "user", "content": [{"type": p} for p in parts] + [{"type": "text", "text": question}]}]


def test_placeholders_filled_by_type_in_prompt_order(tiny):
    """Audio before the image in the prompt: the audio features land on the audio placeholders (the original would
    put the image features there)."""
    tester, model, processor = tiny
    prompt = processor.apply_chat_template(_messages("audio", "image", "image"), add_generation_prompt=True,
                                           tokenize=False)
    assert prompt.index("<speech>") < prompt.index("<image>")
    images, audio = tester.make_images(2, seed=1), tester.make_audio(seed=1)
    inputs = processor(text=prompt, images=images, audio=[audio], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        image_features = model.get_image_features(
            inputs["pixel_values"], inputs["image_grid_hw"], inputs["pixel_values_lowres"], inputs["image_grid_hw_lowres"]
        )
        audio_features = model.get_audio_features(inputs["input_features"], inputs["beats_features"], inputs["audio_chunks"])
    embeds, ids = out.hidden_states[0][0], inputs["input_ids"][0]
    audio_positions = (ids == model.config.audio_token_id).nonzero()[:, 0]
    image_positions = (ids == model.config.image_token_id).nonzero()[:, 0]
    assert audio_positions.max() < image_positions.min()
    torch.testing.assert_close(embeds[audio_positions], audio_features[0])
    torch.testing.assert_close(embeds[image_positions], torch.cat(image_features))
    # hand count: 2 markers + 1 window * (1500 frames / 10 + newline)
    assert len(audio_positions) == 2 + 151


def test_batch_mixing_modalities_equals_items_one_by_one(tiny):
    tester, model, processor = tiny
    items = [
        (("image",), {"images": tester.make_images(1, seed=2)}),
        (("audio",), {"audio": [tester.make_audio(seed=2)]}),
        (("video",), {"videos": [tester.make_video(num_frames=3, seed=2)]}),
        (("image", "audio"), {"images": tester.make_images(1, seed=3), "audio": [tester.make_audio(seed=3)]}),
        ((), {}),
    ]
    prompts = [processor.apply_chat_template(_messages(*parts, question="Describe it." * (i + 1)),
                                             add_generation_prompt=True, tokenize=False)
               for i, (parts, _) in enumerate(items)]
    merged = {"images": [], "audio": [], "videos": []}
    for _, media in items:
        for key, values in media.items():
            merged[key] += values
    batch = processor(text=prompts, padding=True, padding_side="left", return_tensors="pt", **merged)
    assert (batch["attention_mask"][:, 0] == 0).any()
    with torch.no_grad():
        batch_logits = model(**batch).logits
        batch_generated = model.generate(**batch, max_new_tokens=3, do_sample=False)[:, batch["input_ids"].shape[1]:]
    for i, (prompt, (_, media)) in enumerate(zip(prompts, items)):
        single = processor(text=[prompt], return_tensors="pt", **media)
        length = single["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][i, -length:], single["input_ids"][0])
        with torch.no_grad():
            torch.testing.assert_close(batch_logits[i, -length:], model(**single).logits[0], atol=1e-4, rtol=1e-4)
            generated = model.generate(**single, max_new_tokens=3, do_sample=False)[0, length:]
        assert torch.equal(batch_generated[i], generated), i


def test_any_to_any_pipeline_audio_and_image_in_text_out(tiny, tmp_path):
    from transformers import pipeline

    tester, model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    pipe = pipeline("any-to-any", model=str(tmp_path))
    image, audio = tester.make_images(1, seed=4)[0], tester.make_audio(seed=4)
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "audio", "audio": audio},
                                             {"type": "text", "text": "Answer."}]}]
    out = pipe(text=messages, max_new_tokens=4, do_sample=False, return_full_text=False)
    prompt = processor.apply_chat_template(_messages("image", "audio"), add_generation_prompt=True, tokenize=False)
    inputs = processor(text=prompt, images=[image], audio=[audio], return_tensors="pt")
    with torch.no_grad():
        sequences = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    expected = processor.decode(sequences[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert out[0]["generated_text"] == expected


def test_long_audio_is_encoded_in_full_30s_windows():
    extractor = OlaFeatureExtractor(max_chunks=2)
    rng = np.random.default_rng(0)
    clip = rng.standard_normal(16000 * 70).astype(np.float32) * 0.1  # 70 s: windows 0-30, 30-60 (60-70 dropped)
    short = rng.standard_normal(16000 * 5).astype(np.float32) * 0.1
    out = extractor([clip, short], sampling_rate=16000)
    assert out["audio_chunks"].tolist() == [2, 1]
    assert out["input_features"].shape == (3, 128, 3000) and out["beats_features"].shape == (3, 2998, 128)
    whisper = super(OlaFeatureExtractor, extractor).__call__
    second = clip[480000:960000]
    torch.testing.assert_close(out["input_features"][1], whisper([second], sampling_rate=16000, return_tensors="pt")
                               ["input_features"][0])
    padded_short = np.pad(short, (0, 480000 - len(short)))
    expected = (kaldi_fbank(torch.from_numpy(padded_short) * 2**15) - 15.41663) / (2 * 6.55582)
    torch.testing.assert_close(out["beats_features"][2], expected)
    with pytest.raises(ValueError, match="16000"):
        extractor(short, sampling_rate=8000)


def test_video_frames_token_count_by_hand(tiny, tmp_path):
    from mm_testers import write_video

    _, model, processor = tiny
    frames = np.random.default_rng(5).integers(0, 256, (5, 100, 150, 3), dtype=np.uint8)
    path = tmp_path / "clip.mp4"
    write_video(path, frames)
    processor.image_processor.video_num_frames = 3
    try:
        inputs = processor(text=processor.apply_chat_template(_messages("video"), tokenize=False), videos=[str(path)])
    finally:
        processor.image_processor.video_num_frames = 64
    # 100x150 frames, area above 64^2: scale sqrt(4096 / 15000) -> 32x64 px -> 2x4 patches -> 1 row of (2 + newline)
    # + separator = 4 tokens per frame; 3 of the 5 frames sampled; begin + end
    assert inputs["video_grid_thw"].tolist() == [[3, 2, 4]]
    assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == 2 + 3 * 4
    with torch.no_grad():
        assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


def test_relative_position_buckets_by_hand():
    relative = torch.tensor([-900, -80, -79, -5, 0, 5, 79, 80, 799, 5000])
    buckets = relative_position_bucket(relative, num_buckets=320, max_distance=800).tolist()
    # 160 buckets per direction, exact below 80; at d >= 80: 80 + floor(log(d / 80) / log(10) * 80), capped at 159
    assert buckets == [159, 80, 79, 5, 0, 165, 239, 240, 160 + 80 + int(math.log(799 / 80) / math.log(10) * 80), 319]


def test_sentence_streamer_calls_back_per_sentence(tiny):
    tester, model, processor = tiny
    tokenizer = processor.tokenizer
    sentences = []
    streamer = SentenceStreamer(tokenizer, on_sentence=sentences.append, skip_prompt=False)
    text = "Hello world. Is it 3.5 now? Yes! 好的。Then a tail"
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        streamer.put(torch.tensor([token]))
    # CJK text is flushed at once by TextStreamer, so its sentence is complete before the end
    assert sentences == ["Hello world.", "Is it 3.5 now?", "Yes!", "好的。"]
    streamer.end()
    assert sentences == ["Hello world.", "Is it 3.5 now?", "Yes!", "好的。", "Then a tail"]

    received = []
    inputs = tester.example_inputs(processor, num_images=1)
    streamer = SentenceStreamer(tokenizer, on_sentence=received.append, skip_prompt=True, skip_special_tokens=True)
    with torch.no_grad():
        sequences = model.generate(**inputs, max_new_tokens=8, do_sample=False, streamer=streamer)
    generated = tokenizer.decode(sequences[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "".join(received).replace(" ", "") == generated.replace(" ", "").replace("\n", "")


def test_conversion_errors_name_the_problem(parity_root, tmp_path):
    case_dir = _cases(parity_root)[0]
    source = tmp_path / "release"
    shutil.copytree(case_dir / "original", source)
    beats_file = next((source / "pretrained").glob("BEATs*.pt"))
    beats = torch.load(beats_file, weights_only=True)
    beats["model"]["encoder.layers.1.self_attn.relative_attention_bias.weight"] = (
        beats["model"]["encoder.layers.1.self_attn.relative_attention_bias.weight"] + 1
    )
    torch.save(beats, beats_file)
    with pytest.raises(ConversionError, match="relative_attention_bias"):
        vistok.conversion.convert_ola.convert(source)
    beats_file.unlink()
    with pytest.raises(ConversionError, match="BEATs"):
        vistok.conversion.convert_ola.convert(source)
    assert convert_main(["ola", str(source), str(tmp_path / "out")]) == 2


def test_release_with_tokenizer_gives_a_processor_and_shrinks_the_vocabulary(parity_root, tmp_path):
    from mm_testers import make_tiny_tokenizer
    from transformers import AutoProcessor
    from vistok.conversion.convert_ola import PLACEHOLDER_TOKENS, _attach_tokenizer

    case_dir = _cases(parity_root)[0]
    source = tmp_path / "release"
    shutil.copytree(case_dir / "original", source)
    make_tiny_tokenizer().save_pretrained(source)  # 259 tokens
    vocab = json.loads((source / "config.json").read_text())["vocab_size"]
    assert convert_main(["ola", str(source), str(tmp_path / "out")]) == 0
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    model = AutoModelForMultimodalLM.from_pretrained(tmp_path / "out").eval()
    # placeholders come right after the tokenizer's own tokens
    assert (model.config.image_token_id, model.config.audio_token_id, model.config.video_token_id) == (259, 260, 261)
    assert (processor.image_token_id, processor.audio_token_id) == (259, 260)
    io = load_file(case_dir / "io.safetensors")
    prompt = processor.apply_chat_template(_messages("image", "audio"), add_generation_prompt=True, tokenize=False)
    image, waveform = io["image_uint8"], io["waveform"]
    batch = waveform.shape[0] if waveform.ndim == 2 else 1  # batched cases: [B, H, W, 3] images, [B, N] waveforms
    image, waveform = (image[0] if image.ndim == 4 else image), (waveform[0] if waveform.ndim == 2 else waveform)
    inputs = processor(text=prompt, images=[image.numpy()], audio=[waveform.numpy()])
    assert int((inputs["input_ids"] == 260).sum()) == io["speech_tokens"].shape[0] // batch
    assert model.config.text_config.vocab_size == vocab  # the tokenizer is larger: nothing to cut
    # the original loader's resize_token_embeddings(len(tokenizer)): a larger vocabulary is cut to the tokenizer
    tester = OlaTester()
    config = tester.get_config()
    config.text_config.vocab_size = 400
    big = vistok.OlaForConditionalGeneration(config)
    rows = big.get_input_embeddings().weight[:259].clone()
    _attach_tokenizer(big, make_tiny_tokenizer(PLACEHOLDER_TOKENS))
    assert big.get_input_embeddings().weight.shape[0] == 259 and big.lm_head.weight.shape[0] == 259
    assert big.config.text_config.vocab_size == 259
    torch.testing.assert_close(big.get_input_embeddings().weight, rows)


def test_sharded_release_layout_converts_the_same(parity_root, tmp_path):
    """The hub release is `model-0000x-of-0000n.safetensors` + `model.safetensors.index.json`."""
    from safetensors.torch import save_file

    for case_dir in _cases(parity_root):
        source = tmp_path / case_dir.name
        shutil.copytree(case_dir / "original", source, ignore=shutil.ignore_patterns("model.safetensors"))
        state = load_file(case_dir / "original" / "model.safetensors")
        keys = sorted(state)
        shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
        for name, shard_keys in shards.items():
            save_file({k: state[k] for k in shard_keys}, source / name, metadata={"format": "pt"})
        weight_map = {k: name for name, shard_keys in shards.items() for k in shard_keys}
        (source / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        assert convert_main(["ola", str(source), str(tmp_path / f"{case_dir.name}-out")]) == 0
        model = AutoModelForMultimodalLM.from_pretrained(tmp_path / f"{case_dir.name}-out")
        reference = {k: v for k, v in load_file(case_dir / "original" / "model.safetensors").items()}
        head = reference.get("lm_head.weight", reference["model.embed_tokens.weight"])  # tied releases lack lm_head
        torch.testing.assert_close(model.lm_head.weight, head, atol=0, rtol=0)
        qkv = reference["model.vision_tower.vision_tower.blocks.0.attn.qkv.weight"]
        torch.testing.assert_close(model.model.vision_tower.layers[0].self_attn.k_proj.weight, qkv.chunk(3)[1])


def test_tied_release_converts_with_a_tied_head(parity_root, tmp_path):
    """A release saved with `tie_word_embeddings` has no `lm_head.weight` (save_pretrained drops the alias)."""
    from safetensors.torch import save_file

    case_dir = _cases(parity_root)[0]
    source = tmp_path / "release"
    shutil.copytree(case_dir / "original", source)
    state = load_file(source / "model.safetensors")
    del state["lm_head.weight"]
    save_file(state, source / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text()) | {"tie_word_embeddings": True}
    (source / "config.json").write_text(json.dumps(config))
    assert convert_main(["ola", str(source), str(tmp_path / "out")]) == 0
    model = AutoModelForMultimodalLM.from_pretrained(tmp_path / "out")
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    torch.testing.assert_close(model.lm_head.weight, state["model.embed_tokens.weight"], atol=0, rtol=0)


def test_beats_patch_embedding_bias_is_converted(parity_root, tmp_path):
    """A BEATs file with `conv_bias: true` (patch-embedding conv with a bias) converts the bias too, and the
    converted patch embedding equals the conv computed by hand from the file's tensors."""
    case_dir = _cases(parity_root)[0]
    source = tmp_path / "release"
    shutil.copytree(case_dir / "original", source)
    beats_file = next((source / "pretrained").glob("BEATs*.pt"))
    beats = torch.load(beats_file, weights_only=True)
    weight = beats["model"]["patch_embedding.weight"]
    bias = torch.linspace(-0.5, 0.5, weight.shape[0])
    beats["cfg"]["conv_bias"] = True
    beats["model"]["patch_embedding.bias"] = bias
    torch.save(beats, beats_file)
    assert convert_main(["ola", str(source), str(tmp_path / "out")]) == 0
    model = AutoModelForMultimodalLM.from_pretrained(tmp_path / "out")
    conv = model.model.beats_tower.embeddings.patch_embedding
    torch.testing.assert_close(conv.bias, bias, atol=0, rtol=0)
    fbank = torch.randn(1, 1, 32, 128, generator=torch.Generator().manual_seed(0))
    stride = weight.shape[-1]
    torch.testing.assert_close(conv(fbank), torch.nn.functional.conv2d(fbank, weight, bias, stride=stride))
