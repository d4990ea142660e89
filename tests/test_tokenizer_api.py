"""The shared tokenizer API on every architecture: ``return_dict=False``, exact error messages, the training loss
composition, and accelerate hooks / offload on every public entry point (not only ``encode``/``decode``)."""

import pytest
import torch
import torch.nn.functional as F
from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module
from transformers import AutoModel

from testers import all_testers


TESTERS = {t.name: t for t in all_testers()}


def _tester(name):
    return TESTERS[name]


@pytest.mark.parametrize("name", ["titok-vq", "titok-vae", "maetok", "flextok"])
def test_return_dict_false_returns_the_fields_in_order(name):
    tester = _tester(name)
    model = tester.make_model()
    pixel_values = tester.make_pixel_values(2)
    with torch.no_grad():
        encoded = model.encode(pixel_values)
        as_tuple = model.encode(pixel_values, return_dict=False)
        assert isinstance(as_tuple, tuple)
        assert torch.equal(as_tuple[0], encoded.latents)
        if tester.discrete:
            assert torch.equal(as_tuple[1], encoded.tokens)
        else:
            assert encoded.tokens is None
        assert len(as_tuple) == len(encoded.to_tuple())
        source = encoded.tokens if tester.discrete else encoded.latents
        decoded = model.decode(source, **tester.make_decode_kwargs(2))
        decoded_tuple = model.decode(source, return_dict=False, **tester.make_decode_kwargs(2))
        assert isinstance(decoded_tuple, tuple) and torch.equal(decoded_tuple[0], decoded.reconstruction)
        labels = torch.zeros_like(pixel_values)
        output = model(pixel_values, labels=labels, **tester.make_decode_kwargs(2))
        output_tuple = model(pixel_values, labels=labels, return_dict=False, **tester.make_decode_kwargs(2))
    assert isinstance(output_tuple, tuple)
    # (loss, latents, reconstruction, ...): the loss against all-zero labels is the mean squared reconstruction
    torch.testing.assert_close(output_tuple[0], output.reconstruction.float().pow(2).mean())
    torch.testing.assert_close(output.loss, output.reconstruction.float().pow(2).mean())
    assert torch.equal(output_tuple[1], output.latents) and torch.equal(output_tuple[2], output.reconstruction)
    without_labels = model(pixel_values, return_dict=False, **tester.make_decode_kwargs(2))
    assert torch.equal(without_labels[0], output.latents)  # no loss: the latents come first


def test_error_messages_name_expected_and_actual_values():
    tester = _tester("titok-vq-odd")
    model = tester.make_model()
    # 40x41 is accepted (the patch conv drops the extra column, as in the original); 40x48 gives 5x6 patches
    with pytest.raises(ValueError, match=r"^pixel_values of size 40x48 \(height x width\) give 5x6 patches of 8 px; .* "
                                         r"exactly 25 \(5x5\)"):
        model.encode(torch.zeros(1, 3, 40, 48))
    with pytest.raises(ValueError, match=r"^pixel_values must have 3 channels in dimension 1, got 1 \(shape \(2, 1, 40, 40\)\)"):
        model.encode(torch.zeros(2, 1, 40, 40))
    with pytest.raises(ValueError, match=r"^pixel_values must have shape \[batch, channels, height, width\], got \(3, 40, 40\)"):
        model.encode(torch.zeros(3, 40, 40))
    with pytest.raises(ValueError, match=r"^pixel_values must be a floating point tensor, got dtype torch.uint8"):
        model.encode(torch.zeros(1, 3, 40, 40, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"^pixel_values must be a torch.Tensor, got list"):
        model.encode([[0.0]])
    with pytest.raises(ValueError, match=r"^expected 7 tokens per image, got 6 \(shape \(2, 6\)\)"):
        model.decode(torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^token ids must be in \[0, 37\), got values in \[0, 37\]"):
        model.decode(torch.tensor([[0, 1, 2, 3, 4, 5, 37]]))
    with pytest.raises(ValueError, match=r"^token ids must be in \[0, 37\), got values in \[-2, 5\]"):
        model.decode(torch.tensor([[-2, 1, 2, 3, 4, 5, 5]]))
    with pytest.raises(ValueError, match=r"^tokens must have shape \[batch, num_tokens\], got \(7,\)"):
        model.decode(torch.zeros(7, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^expected 7 latent tokens, got 8 \(shape \(1, 8, 5\)\)"):
        model.decode(torch.zeros(1, 8, 5))
    with pytest.raises(ValueError, match=r"^latents must have shape \[batch, num_tokens, latent_dim\], got \(7, 5\)"):
        model.decode(torch.zeros(7, 5))
    with pytest.raises(ValueError, match=r"^decode expects a torch.Tensor, got list"):
        model.decode([[1, 2]])
    with pytest.raises(ValueError, match=r"^labels must have the reconstruction's shape \(1, 3, 40, 40\), got \(1, 3, 40, 39\)"):
        model(torch.zeros(1, 3, 40, 40), labels=torch.zeros(1, 3, 40, 39))
    # boundary ids are valid
    with torch.no_grad():
        assert model.decode(torch.tensor([[0, 36, 0, 36, 0, 36, 0]])).reconstruction.shape == (1, 3, 40, 40)
    # TiTok accepts every size the original does (checked in validate_input_size), so no single expected size
    assert (model.vocab_size, model.num_tokens, model.expected_image_size) == (37, 7, None)
    continuous = _tester("maetok").make_model()
    assert continuous.vocab_size is None
    with pytest.raises(ValueError, match=r"continuous tokenizer: decode takes float latents, got integer tensor of dtype torch.int64"):
        continuous.decode(torch.zeros(1, 8, dtype=torch.long))


def test_maetok_pixel_decoder_uses_the_decoder_patch_size():
    tester = _tester("maetok-odd-unequal-patch")
    model = tester.make_model()
    # 40 px images, 8-px encoder patches (5x5 grid), 4-px decoder patches (10x10 grid, 4 * 4 * 3 values per patch)
    assert model.decoder.head.proj.out_features == 4 * 4 * 3
    with torch.no_grad():
        latents = model.encode(tester.make_pixel_values(2)).latents
        assert latents.shape == (2, 7, 12)
        assert model.decode(latents).reconstruction.shape == (2, 3, 40, 40)


# ---------------------------------------------------------------------------------------- hooks and offloading


class _RecordingHook(ModelHook):
    def __init__(self):
        self.pre, self.post = 0, 0

    def pre_forward(self, module, *args, **kwargs):
        self.pre += 1
        return args, kwargs

    def post_forward(self, module, output):
        self.post += 1
        return output


def _entry_points(name, model, tester):
    """name -> zero-argument call of every public entry point of the model."""
    pixel_values = tester.make_pixel_values(1)
    with torch.no_grad():
        encoded = model.encode(pixel_values)
    source = encoded.tokens if encoded.tokens is not None else encoded.latents
    calls = {
        "encode": lambda: model.encode(pixel_values),
        "decode": lambda: model.decode(source, **tester.make_decode_kwargs(1)),
    }
    if name.startswith("titok"):
        calls["tokens_to_latents"] = lambda: model.tokens_to_latents(encoded.tokens)
    if name == "titok-legacy-vq":
        calls["decode_proxy_codes"] = lambda: model.decode_proxy_codes(torch.zeros(1, 4, 4, dtype=torch.long))
    if name.startswith("maetok"):
        calls["decode_features"] = lambda: model.decode_features(encoded.latents, "hog")
    if name == "flextok":
        noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        calls["tokens_to_latents"] = lambda: model.tokens_to_latents(encoded.tokens)
        calls["vae_encode"] = lambda: model.vae_encode(pixel_values)
        calls["vae_decode"] = lambda: model.vae_decode(noise)
        calls["predict_velocity"] = lambda: model.predict_velocity(encoded.latents, noise, 0.5)
    return calls


@pytest.mark.parametrize("name", ["titok-legacy-vq", "maetok-hog", "flextok"])
def test_every_entry_point_runs_the_accelerate_hook(name):
    tester = _tester(name)
    model = tester.make_model()
    hook = _RecordingHook()
    calls = _entry_points(name, model, tester)
    add_hook_to_module(model, hook)
    try:
        for entry, call in calls.items():
            hook.pre = hook.post = 0
            with torch.no_grad():
                call()
            assert hook.pre >= 1 and hook.post == hook.pre, (entry, hook.pre, hook.post)
    finally:
        remove_hook_from_module(model)


@pytest.mark.parametrize("name", ["titok-legacy-vq", "maetok-hog", "flextok"])
def test_every_entry_point_works_with_disk_offload(name, tmp_path):
    tester = _tester(name)
    model = tester.make_model()
    model.save_pretrained(tmp_path / "model")
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    offloaded = AutoModel.from_pretrained(
        tmp_path / "model", device_map="auto", max_memory={"cpu": total // 3}, offload_folder=str(tmp_path / "off")
    ).eval()
    assert "disk" in set(offloaded.hf_device_map.values())
    reference, offloaded_calls = _entry_points(name, model, tester), _entry_points(name, offloaded, tester)
    for entry in reference:
        with torch.no_grad():
            expected, actual = reference[entry](), offloaded_calls[entry]()
        expected = expected[0] if isinstance(expected, tuple) else getattr(expected, "to_tuple", lambda: (expected,))()[0]
        actual = actual[0] if isinstance(actual, tuple) else getattr(actual, "to_tuple", lambda: (actual,))()[0]
        torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-6, msg=lambda m: f"{entry}: {m}")
    with torch.no_grad():
        pixel_values = tester.make_pixel_values(2)
        forward = offloaded(pixel_values, labels=pixel_values, **tester.make_decode_kwargs(2))
        expected = model(pixel_values, labels=pixel_values, **tester.make_decode_kwargs(2))
    torch.testing.assert_close(forward.reconstruction, expected.reconstruction, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(forward.loss, F.mse_loss(expected.reconstruction, pixel_values), atol=1e-6, rtol=1e-6)
