"""Shared checks run over every tiny tokenizer configuration in ``tests/testers``."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModel, pipeline

import vistok  # noqa: F401
from testers import all_testers


TESTERS = all_testers()
IDS = [t.name for t in TESTERS]


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
    tester.make_image_processor().save_pretrained(tmp_path)
    return model


@pytest.fixture(params=TESTERS, ids=IDS)
def tester(request):
    return request.param


def test_encode_decode_contract(tester):
    model = tester.make_model()
    pixel_values = tester.make_pixel_values(2)
    outputs = run_tokenizer(model, tester, pixel_values)
    assert outputs["reconstruction"].shape == pixel_values.shape
    assert outputs["latents"].ndim == 3 and outputs["latents"].shape[0] == 2
    if tester.num_tokens is not None:
        assert outputs["latents"].shape[1] == tester.num_tokens
    if tester.discrete:
        assert outputs["tokens"].dtype == torch.long and outputs["tokens"].shape == outputs["latents"].shape[:2]
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
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(processor) is tester.image_processor_class
    pil_processor = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    assert type(pil_processor).__name__ == tester.image_processor_class.__name__ + "Pil"
    saved, reloaded = model.config.to_diff_dict(), config.to_diff_dict()
    for volatile in ("_name_or_path", "dtype", "transformers_version"):
        saved.pop(volatile, None), reloaded.pop(volatile, None)
    assert saved == reloaded


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


@pytest.mark.parametrize("tester", [t for t in TESTERS if t.supports_sdpa], ids=[t.name for t in TESTERS if t.supports_sdpa])
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
    assert_outputs_close(run_tokenizer(reloaded, tester, pixel_values), trained, atol=1e-6)
    merged = reloaded.merge_and_unload()
    assert type(merged) is tester.model_class
    assert not any("lora" in k for k in merged.state_dict())
    assert_outputs_close(run_tokenizer(merged, tester, pixel_values), trained, atol=1e-4)


def _png(tester) -> Image.Image:
    _, height, width = tester.input_shape
    return Image.fromarray(np.random.default_rng(5).integers(0, 256, (height, width, 3), dtype=np.uint8))


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


@pytest.mark.parametrize(
    "tester", [t for t in TESTERS if not t.make_decode_kwargs(1)], ids=[t.name for t in TESTERS if not t.make_decode_kwargs(1)]
)
def test_image_feature_extraction_pipeline(tester, tmp_path):
    model = _saved(tester, tmp_path)
    pipe = pipeline("image-feature-extraction", model=str(tmp_path))
    image = _png(tester)
    features = pipe(image, return_tensors=True)
    pixel_values = tester.make_image_processor()(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model.encode(pixel_values).latents
    torch.testing.assert_close(features, expected)


def test_bad_inputs_raise_clear_errors(tester):
    model = tester.make_model()
    channels, height, width = tester.input_shape
    good = tester.make_pixel_values(1)
    with pytest.raises(ValueError, match=f"{channels} channels"):
        model.encode(torch.rand(1, channels + 1, height, width))
    with pytest.raises(ValueError, match=f"{height}x{width}"):
        model.encode(torch.rand(1, channels, height + 8, width))
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
        too_many = torch.cat([encoded.tokens, encoded.tokens[:, :1]], dim=1)
        n = encoded.tokens.shape[1]
        # fixed-length tokenizers name the count; variable-length ones (FlexTok) the accepted range
        with pytest.raises(ValueError, match=rf"expected {n} tokens per image, got {n + 1}|1 to {n} tokens"):
            model.decode(too_many, **kwargs)
        with pytest.raises(ValueError, match=r"\[batch, num_tokens\]"):
            model.decode(encoded.tokens[0], **kwargs)
    else:
        with pytest.raises(ValueError, match="continuous tokenizer"):
            model.decode(torch.zeros(1, encoded.latents.shape[1], dtype=torch.long), **kwargs)
    with pytest.raises(ValueError, match=r"\[batch, num_tokens, latent_dim\]"):
        model.decode(encoded.latents[0], **kwargs)


def test_config_serialisation_is_stable(tester, tmp_path):
    config = tester.make_config()
    config.save_pretrained(tmp_path)
    reloaded = tester.config_class.from_pretrained(tmp_path)
    assert reloaded.to_diff_dict() == config.to_diff_dict()
    from_json = tester.config_class.from_dict(json.loads(io.StringIO(config.to_json_string()).getvalue()))
    assert from_json.to_diff_dict() == config.to_diff_dict()
    assert json.loads(config.to_json_string())["model_type"] == tester.config_class.model_type
