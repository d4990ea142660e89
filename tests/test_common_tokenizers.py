"""Shared checks run over every tiny tokenizer configuration in ``tests/testers``."""

import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModel, pipeline

import vistok  # noqa: F401
from testers import all_testers


TESTERS = all_testers()
IDS = [t.name for t in TESTERS]


def over(predicate):
    """Parametrises a test over the testers where ``predicate(tester)`` holds."""
    chosen = [t for t in TESTERS if predicate(t)]
    return pytest.mark.parametrize("tester", chosen, ids=[t.name for t in chosen])


over_images = over(lambda t: t.is_image)
over_videos = over(lambda t: t.is_video)


def run_tokenizer(model, tester, pixel_values) -> dict:
    """encode -> decode with the tester's (freshly seeded) decode kwargs; returns the tensors to compare."""
    with torch.no_grad():
        encoded = model.encode(pixel_values)
        source = encoded.tokens if encoded.tokens is not None else encoded.latents
        decoded = model.decode(source, **tester.make_decode_kwargs(pixel_values.shape[0]))
    outputs = {"latents": encoded.latents, "reconstruction": decoded.reconstruction}
    if encoded.tokens is not None:
        outputs["tokens"] = encoded.tokens
    return outputs


def assert_outputs_close(actual: dict, expected: dict, atol: float = 0.0):
    assert actual.keys() == expected.keys()
    for key in expected:
        if key == "tokens" or atol == 0.0:
            assert torch.equal(actual[key].cpu(), expected[key].cpu()), key
        else:
            torch.testing.assert_close(actual[key].float().cpu(), expected[key].float().cpu(), atol=atol, rtol=atol)


def _saved(tester, tmp_path, **overrides):
    model = tester.make_model(**overrides)
    model.save_pretrained(tmp_path)
    tester.make_processor().save_pretrained(tmp_path)
    return model


@pytest.fixture(params=TESTERS, ids=IDS)
def tester(request):
    return request.param


def test_encode_decode_contract(tester):
    model = tester.make_model()
    pixel_values = tester.make_pixel_values(2)
    outputs = run_tokenizer(model, tester, pixel_values)
    assert outputs["reconstruction"].shape == pixel_values.shape
    assert outputs["latents"].shape[0] == 2
    if tester.latent_shape is not None:
        assert outputs["latents"].shape[1:] == tester.latent_shape
    else:
        assert outputs["latents"].ndim == 3
    if tester.num_tokens is not None:
        assert outputs["latents"].shape[1] == tester.num_tokens
    if tester.discrete:
        assert outputs["tokens"].dtype == torch.long
        if tester.token_shape is not None:
            assert outputs["tokens"].shape == (2, *tester.token_shape)
        else:
            assert outputs["tokens"].shape == outputs["latents"].shape[:2]
        # decoding ids and decoding the quantized latents give the same images
        with torch.no_grad():
            from_latents = model.decode(outputs["latents"], **tester.make_decode_kwargs(2)).reconstruction
        torch.testing.assert_close(from_latents, outputs["reconstruction"], atol=1e-5, rtol=1e-5)
    else:
        assert "tokens" not in outputs
    # eval mode is deterministic
    assert_outputs_close(run_tokenizer(model, tester, pixel_values), outputs)
    # forward = decode(encode(x)), with a loss when labels are given
    with torch.no_grad():
        forward = model(pixel_values, labels=pixel_values, **tester.make_decode_kwargs(2))
    torch.testing.assert_close(forward.reconstruction, outputs["reconstruction"], atol=1e-5, rtol=1e-5)
    # eval mode: no quantizer loss, the loss is exactly the reconstruction MSE
    expected_loss = torch.nn.functional.mse_loss(forward.reconstruction, pixel_values)
    if getattr(forward, "prior_loss", None) is not None:  # LARP's AR prior adds its weighted cross-entropy
        expected_loss = expected_loss + model.config.prior_loss_weight * forward.prior_loss
    assert forward.quantization_loss is None
    torch.testing.assert_close(forward.loss, expected_loss)


def test_save_load_round_trip(tester, tmp_path):
    model = _saved(tester, tmp_path)
    reloaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(reloaded) is type(model)
    assert not any(info.values()), info
    pixel_values = tester.make_pixel_values(2)
    assert_outputs_close(run_tokenizer(reloaded.eval(), tester, pixel_values), run_tokenizer(model, tester, pixel_values))


def test_auto_classes(tester, tmp_path):
    model = _saved(tester, tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is tester.config_class
    assert type(AutoModel.from_config(config)) is tester.model_class
    processor = tester.auto_processor_class.from_pretrained(tmp_path)
    assert type(processor) is tester.processor_class
    assert processor.to_dict() == tester.make_processor().to_dict()
    if tester.is_image:
        pil_processor = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
        assert type(pil_processor).__name__ == tester.image_processor_class.__name__ + "Pil"
    saved, reloaded = model.config.to_diff_dict(), config.to_diff_dict()
    for volatile in ("_name_or_path", "dtype", "transformers_version"):
        saved.pop(volatile, None), reloaded.pop(volatile, None)
    assert saved == reloaded


@over_images
def test_image_processor(tester):
    processor = tester.make_image_processor()
    _, height, width = tester.input_shape
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height + 9, width + 5, 3), dtype=np.uint8))
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, *tester.input_shape)
    low, high = tester.input_range
    assert pixel_values.min() >= low - 1e-6 and pixel_values.max() <= high + 1e-6
    # postprocess inverts the normalisation exactly on an unresized image
    exact = Image.fromarray(np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8))
    values = processor(exact, return_tensors="pt")["pixel_values"]
    restored = processor.postprocess(values, output_type="np")[0]
    np.testing.assert_array_equal(restored, np.asarray(exact))
    assert processor.postprocess(values)[0].size == (width, height)


def _random_clip(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


@over_videos
def test_video_processor(tester):
    processor = tester.make_processor()
    num_frames, _, height, width = tester.input_shape
    raw = _random_clip(*tester.resolved_raw_video_shape(), seed=0)
    pixel_values = tester.preprocess(processor, raw)
    assert pixel_values.shape == (1, *tester.input_shape)
    low, high = tester.input_range
    assert pixel_values.min() >= low - 1e-6 and pixel_values.max() <= high + 1e-6
    # frames given as a list of PIL images are the same clip
    from_pil = tester.preprocess(processor, [Image.fromarray(frame) for frame in raw])
    torch.testing.assert_close(from_pil, pixel_values)
    # postprocess inverts the normalisation exactly on a clip already at the model's size
    exact = _random_clip(num_frames, height, width, seed=1)
    values = tester.preprocess(processor, exact)
    restored = processor.postprocess(values, output_type="np")
    assert restored.shape == (1, num_frames, height, width, 3) and restored.dtype == np.uint8
    np.testing.assert_array_equal(restored[0], exact)
    frames = processor.postprocess(values)[0]
    assert len(frames) == num_frames and all(frame.size == (width, height) for frame in frames)
    np.testing.assert_array_equal(np.asarray(frames[-1]), exact[-1])


def test_bf16_forward(tester, tmp_path):
    _saved(tester, tmp_path)
    model = AutoModel.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    reference = AutoModel.from_pretrained(tmp_path).eval()
    for name in model._keep_in_fp32_modules_strict or []:
        module = getattr(model, name, None)
        if module is not None:
            assert all(p.dtype == torch.float32 for p in module.parameters()), name
    pixel_values = tester.make_pixel_values(2)
    low_precision = run_tokenizer(model, tester, pixel_values.to(torch.bfloat16))
    full = run_tokenizer(reference, tester, pixel_values)
    reconstruction = low_precision["reconstruction"].float()
    assert torch.isfinite(reconstruction).all()
    # half precision must stay close to float32 in aggregate
    error = (reconstruction - full["reconstruction"]).norm() / full["reconstruction"].norm()
    assert error < 0.1, error


@over(lambda t: t.supports_sdpa)
def test_eager_matches_sdpa(tester, tmp_path):
    _saved(tester, tmp_path)
    pixel_values = tester.make_pixel_values(2)
    eager = AutoModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    sdpa = AutoModel.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    assert_outputs_close(run_tokenizer(sdpa, tester, pixel_values), run_tokenizer(eager, tester, pixel_values), atol=1e-5)


def _loss_and_grads(model, tester, pixel_values):
    model.zero_grad()
    torch.manual_seed(0)
    loss = model(pixel_values, labels=pixel_values, **tester.make_decode_kwargs(pixel_values.shape[0])).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing(tester):
    model = tester.make_model().train()
    assert model.supports_gradient_checkpointing
    pixel_values = tester.make_pixel_values(2)
    loss, grads = _loss_and_grads(model, tester, pixel_values)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.is_gradient_checkpointing
    checkpointed_loss, checkpointed_grads = _loss_and_grads(model, tester, pixel_values)
    torch.testing.assert_close(checkpointed_loss, loss)
    assert grads.keys() == checkpointed_grads.keys() and len(grads) > 0
    for name in grads:
        torch.testing.assert_close(checkpointed_grads[name], grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_device_map_cpu_disk_offload(tester, tmp_path):
    model = _saved(tester, tmp_path / "model")
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    budget = max(total // 3, _largest_no_split_module(model) + 4096)
    offloaded = AutoModel.from_pretrained(
        tmp_path / "model", device_map="auto", max_memory={"cpu": budget}, offload_folder=str(tmp_path / "offload")
    ).eval()
    assert "disk" in set(offloaded.hf_device_map.values()), offloaded.hf_device_map
    pixel_values = tester.make_pixel_values(2)
    assert_outputs_close(run_tokenizer(offloaded, tester, pixel_values), run_tokenizer(model, tester, pixel_values), atol=1e-6)


def _largest_no_split_module(model) -> int:
    names = set(model._no_split_modules or [])
    sizes = [
        sum(p.numel() * p.element_size() for p in module.parameters())
        for module in model.modules()
        if type(module).__name__ in names
    ]
    return max(sizes, default=0)


def test_lora_fine_tuning(tester, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    model = tester.make_model()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(tester.lora_target_modules)))
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n, p in peft_model.named_parameters() if p.requires_grad)
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    pixel_values = tester.make_pixel_values(4, seed=3)
    peft_model.train()
    losses = []
    for step in range(6):
        torch.manual_seed(step)
        loss = peft_model(pixel_values, labels=pixel_values, **tester.make_decode_kwargs(4)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    peft_model.eval()
    trained = run_tokenizer(peft_model, tester, pixel_values)

    peft_model.save_pretrained(tmp_path / "adapter")
    fresh = tester.model_class(tester.make_config())
    fresh.load_state_dict(base_state)
    reloaded = PeftModel.from_pretrained(fresh.eval(), tmp_path / "adapter").eval()
    # 1e-5: PyTorch's 3D convolutions take another kernel path when parameters stop requiring grad (Emu3's video path
    # moves by ~3e-6 from that alone, with identical weights)
    assert_outputs_close(run_tokenizer(reloaded, tester, pixel_values), trained, atol=1e-5)
    merged = reloaded.merge_and_unload()
    assert type(merged) is tester.model_class
    assert not any("lora" in k for k in merged.state_dict())
    assert_outputs_close(run_tokenizer(merged, tester, pixel_values), trained, atol=1e-4)


def _png(tester) -> Image.Image:
    _, height, width = tester.channels_height_width
    return Image.fromarray(np.random.default_rng(5).integers(0, 256, (height, width, 3), dtype=np.uint8))


@over_images
def test_image_tokenization_pipeline(tester, tmp_path):
    model = _saved(tester, tmp_path)
    pipe = pipeline("image-tokenization", model=str(tmp_path))
    image = _png(tester)
    result = pipe(image, decode_kwargs=tester.make_decode_kwargs(1))
    pixel_values = tester.make_image_processor()(image, return_tensors="pt")["pixel_values"]
    expected = run_tokenizer(model, tester, pixel_values)
    if tester.discrete:
        assert result["tokens"] == expected["tokens"][0].tolist()
    else:
        assert result["tokens"] is None
    torch.testing.assert_close(result["latents"], expected["latents"][0])
    assert isinstance(result["image"], Image.Image) and result["image"].size == image.size
    reference = tester.make_image_processor().postprocess(expected["reconstruction"], output_type="np")[0]
    np.testing.assert_array_equal(np.asarray(result["image"]), reference)


@over(lambda t: t.is_image and not t.make_decode_kwargs(1))
def test_image_feature_extraction_pipeline(tester, tmp_path):
    model = _saved(tester, tmp_path)
    pipe = pipeline("image-feature-extraction", model=str(tmp_path))
    image = _png(tester)
    features = pipe(image, return_tensors=True)
    pixel_values = tester.make_image_processor()(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model.encode(pixel_values).latents
    torch.testing.assert_close(features, expected)


@over_images
def test_bad_inputs_raise_clear_errors(tester):
    model = tester.make_model()
    channels, height, width = tester.input_shape
    good = tester.make_pixel_values(1)
    with pytest.raises(ValueError, match=f"{channels} channels"):
        model.encode(torch.rand(1, channels + 1, height, width))
    bad_height, bad_width = tester.resolved_bad_spatial_size()
    with pytest.raises(ValueError, match=f"{bad_height}x{bad_width}"):
        model.encode(torch.rand(1, channels, bad_height, bad_width))
    with pytest.raises(ValueError, match="floating point"):
        model.encode((good * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"\[batch, channels, height, width\]"):
        model.encode(good[0])
    with pytest.raises(ValueError, match="torch.Tensor"):
        model.encode(np.zeros((1, channels, height, width), dtype=np.float32))
    with torch.no_grad():
        encoded = model.encode(good)
    kwargs = tester.make_decode_kwargs(1)
    if tester.discrete:
        tokens = encoded.tokens.clone()
        tokens[0, 0] = model.vocab_size
        with pytest.raises(ValueError, match=f"token ids must be in \\[0, {model.vocab_size}\\)"):
            model.decode(tokens, **kwargs)
        tokens[0, 0] = -1
        with pytest.raises(ValueError, match="token ids must be in"):
            model.decode(tokens, **kwargs)
        if not tester.variable_token_grid:
            too_many = torch.cat([encoded.tokens, encoded.tokens[:, :1]], dim=1)
            n = encoded.tokens.shape[1]
            # fixed-length tokenizers name the count; variable-length ones (FlexTok) the accepted range
            with pytest.raises(ValueError, match=rf"expected {n} tokens per (image|video), got {n + 1}|1 to {n} tokens"):
                model.decode(too_many, **kwargs)
        with pytest.raises(ValueError, match=re.escape(tester.token_layout)):
            model.decode(encoded.tokens[0], **kwargs)
    else:
        with pytest.raises(ValueError, match="continuous tokenizer"):
            model.decode(torch.zeros(1, encoded.latents.shape[1], dtype=torch.long), **kwargs)
    with pytest.raises(ValueError, match=re.escape(tester.latent_layout)):
        model.decode(encoded.latents[0], **kwargs)


def _write_mp4(path, clip: np.ndarray, fps: int = 8) -> None:
    """Independent of the pipeline's writer: lossless H.264 (qp 0), so decoding gives back nearly the same frames."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"qp": "0"})
        stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], "yuv444p"
        for frame in clip:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _read_mp4(path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@over_videos
def test_video_tokenization_pipeline(tester, tmp_path):
    pytest.importorskip("av")
    model = _saved(tester, tmp_path / "model")
    processor = tester.make_processor()
    pipe = pipeline("video-tokenization", model=str(tmp_path / "model"))
    num_frames, _, height, width = tester.input_shape
    clip = _random_clip(num_frames, height, width, seed=5)

    # frames in memory (a list of PIL images) -> tokens, latents and reconstructed frames
    result = pipe([Image.fromarray(frame) for frame in clip], decode_kwargs=tester.make_decode_kwargs(1))
    expected = run_tokenizer(model, tester, tester.preprocess(processor, clip))
    if tester.discrete:
        assert result["tokens"] == expected["tokens"][0].tolist()
    else:
        assert result["tokens"] is None
    torch.testing.assert_close(result["latents"], expected["latents"][0])
    reference = processor.postprocess(expected["reconstruction"], output_type="np")[0]
    assert len(result["video"]) == num_frames
    np.testing.assert_array_equal(np.stack([np.asarray(frame) for frame in result["video"]]), reference)

    # an mp4 file in, an mp4 file out
    source, written = tmp_path / "in.mp4", tmp_path / "out.mp4"
    _write_mp4(source, clip)
    decoded = _read_mp4(source)
    assert decoded.shape == clip.shape and np.abs(decoded.astype(int) - clip).max() <= 8
    result = pipe(str(source), decode_kwargs=tester.make_decode_kwargs(1), output_video_path=str(written))
    expected = run_tokenizer(model, tester, tester.preprocess(processor, decoded))
    if tester.discrete:
        assert result["tokens"] == expected["tokens"][0].tolist()
    torch.testing.assert_close(result["latents"], expected["latents"][0])
    assert result["video_path"] == str(written)
    round_trip = _read_mp4(written)
    assert round_trip.shape == (num_frames, height, width, 3)
    reference = processor.postprocess(expected["reconstruction"], output_type="np")[0]
    # the writer encodes with a lossy codec: close on average, not exact
    assert np.abs(round_trip.astype(float) - reference).mean() < 12


@over_videos
def test_video_bad_inputs_raise_clear_errors(tester):
    model = tester.make_model()
    num_frames, channels, height, width = tester.input_shape
    good = tester.make_pixel_values(1)
    with pytest.raises(ValueError, match="torch.Tensor"):
        model.encode(good.numpy())
    with pytest.raises(ValueError, match="floating point"):
        model.encode((good * 255).to(torch.uint8))
    if not tester.accepts_images:
        with pytest.raises(ValueError, match=r"\[batch, frames, channels, height, width\]"):
            model.encode(good[0])
    with pytest.raises(ValueError, match=f"{channels} channels"):
        model.encode(torch.rand(1, num_frames, channels + 1, height, width))
    for bad_frames in tester.resolved_bad_num_frames():
        with pytest.raises(ValueError, match=rf"(?s)(?=.*frames)(?=.*\b{bad_frames}\b)"):
            model.encode(torch.rand(1, bad_frames, channels, height, width))
    bad_height, bad_width = tester.resolved_bad_spatial_size()
    with pytest.raises(ValueError, match=f"{bad_height}x{bad_width}"):
        model.encode(torch.rand(1, num_frames, channels, bad_height, bad_width))
    with torch.no_grad():
        encoded = model.encode(good)
    kwargs = tester.make_decode_kwargs(1)
    if tester.discrete:
        tokens = encoded.tokens.clone()
        tokens.view(-1)[0] = model.vocab_size
        with pytest.raises(ValueError, match=f"token ids must be in \\[0, {model.vocab_size}\\)"):
            model.decode(tokens, **kwargs)
        tokens.view(-1)[0] = -1
        with pytest.raises(ValueError, match="token ids must be in"):
            model.decode(tokens, **kwargs)
        if not tester.variable_token_grid:
            too_many = torch.cat([encoded.tokens, encoded.tokens[..., :1]], dim=-1)
            with pytest.raises(ValueError, match="tokens"):
                model.decode(too_many, **kwargs)
        if not tester.accepts_images:
            with pytest.raises(ValueError, match=re.escape(tester.token_layout)):
                model.decode(encoded.tokens[0], **kwargs)
    else:
        with pytest.raises(ValueError, match="continuous tokenizer"):
            model.decode(torch.zeros(encoded.latents.shape[:-1], dtype=torch.long), **kwargs)
    if not tester.accepts_images:
        with pytest.raises(ValueError, match=re.escape(tester.latent_layout)):
            model.decode(encoded.latents[0], **kwargs)


def test_config_serialisation_is_stable(tester, tmp_path):
    config = tester.make_config()
    config.save_pretrained(tmp_path)
    reloaded = tester.config_class.from_pretrained(tmp_path)
    assert reloaded.to_diff_dict() == config.to_diff_dict()
    from_json = tester.config_class.from_dict(json.loads(io.StringIO(config.to_json_string()).getvalue()))
    assert from_json.to_diff_dict() == config.to_diff_dict()
    assert json.loads(config.to_json_string())["model_type"] == tester.config_class.model_type
