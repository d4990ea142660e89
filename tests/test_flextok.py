"""FlexTok: parity with the original code through `vistok-convert` + the Auto classes, conversion layouts and errors,
prefix decoding, guidance, determinism, nested dropout in training, variants and preprocessing."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import parity_case_dir, parity_cases
from PIL import Image
from safetensors.torch import load_file, save_file
from testers.flextok import TINY_FLEXTOK, flextok_decode_kwargs
from transformers import AutoImageProcessor, AutoModel

import vistok
from vistok import FlexTokConfig, FlexTokImageProcessor, FlexTokImageProcessorPil, FlexTokModel
from vistok.conversion.__main__ import main as convert_main
from vistok.conversion.convert_flextok import convert
from vistok.conversion.utils import ConversionError
from vistok.modeling.modeling_flextok import _flextok_sincos_table, register_attention_mask


ATOL = RTOL = 1e-4
# every case shipped with the fixtures (the further cases CI holds included)
CASES = parity_cases("flextok")


@pytest.fixture(scope="module")
def converted(parity_root, tmp_path_factory):
    """case name -> directory converted with the CLI (once per module)."""
    results = {}

    def get(case):
        if case not in results:
            parity_case_dir(parity_root, "flextok", case)
            dest = tmp_path_factory.mktemp("flextok") / case
            assert convert_main(["flextok", str(parity_root / "flextok" / case / "original"), str(dest)]) == 0
            results[case] = dest
        return results[case]

    return get


def _close(actual, expected, name):
    torch.testing.assert_close(actual.float(), expected, atol=ATOL, rtol=RTOL, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("case", CASES)
def test_parity_every_stored_tensor(parity_root, converted, case):
    case_dir = parity_root / "flextok" / case
    io = load_file(case_dir / "io.safetensors")
    meta = json.loads((case_dir / "io_meta.json").read_text())
    model, info = AutoModel.from_pretrained(converted(case), output_loading_info=True)
    assert isinstance(model, FlexTokModel) and not any(info.values()), info
    assert isinstance(AutoImageProcessor.from_pretrained(converted(case)), FlexTokImageProcessor)
    model.eval()
    pixel_values, tokens, noise = io["pixel_values"], io["tokens"], io["decode_noise"]
    with torch.no_grad():
        _close(model.vae_encode(pixel_values), io["vae_latents"], "vae_latents")
        _close(model.vae_decode(io["vae_latents"]), io["vae_reconstruction"], "vae_reconstruction")
        encoded = model.encode(pixel_values)
        assert torch.equal(encoded.tokens, tokens)
        _close(encoded.encoder_output, io["encoder_latents"], "encoder_latents")
        _close(encoded.latents, io["quantized_codes"], "quantized_codes")
        codes = model.tokens_to_latents(tokens)
        assert torch.equal(codes, io["quantized_codes"])
        # the stored sin-cos tables are what a fresh model computes
        for embeddings in (model.encoder.embeddings, model.decoder.embeddings):
            table = embeddings.position_embedding
            fresh = _flextok_sincos_table(table.shape[1], *model.config.grid_shape)
            torch.testing.assert_close(table, fresh, atol=1e-6, rtol=0)
        checked = 0
        for name in io:
            if not name.startswith("decoder_velocity_t"):
                continue
            time_text, branch = name[len("decoder_velocity_t"):].split("_")
            out = model.predict_velocity(
                codes, noise, float(time_text.replace("p", ".")), unconditional=branch == "uncond",
                output_repa_features=True,
            )
            _close(out.velocity, io[name], name)
            if time_text == "1p0" and branch == "cond" and "decoder_repa_layer_patches" in io:
                _close(out.repa_features, io["decoder_repa_layer_patches"], "decoder_repa_layer_patches")
            checked += 1
        assert checked >= 2
        for run, settings in meta["decode_runs"].items():
            decoded = model.decode(
                tokens[:, : settings["keep_k"]],
                num_steps=meta["timesteps"],
                guidance_scale=settings["guidance_scale"],
                guidance_type="apg" if settings["perform_norm_guidance"] else "cfg",
                noise=noise,
            )
            _close(decoded.vae_latents, io[f"decoded_latents_{run}"], f"decoded_latents_{run}")
            _close(decoded.reconstruction, io[f"decoded_pixels_{run}"], f"decoded_pixels_{run}")
        # the fixture's noise was drawn image by image from torch.Generator().manual_seed(1), as `generator=` does
        seeded = model.decode(tokens, num_steps=meta["timesteps"], guidance_scale=1.0,
                              generator=torch.Generator().manual_seed(1), image_size=tuple(pixel_values.shape[-2:]))
        _close(seeded.vae_latents, io["decoded_latents_full_noguidance"], "generator decode")


def _config_fields(model) -> dict:
    return model.config.to_diff_dict() | {"_name_or_path": ""}


def _copy_release(case_dir, dest):
    shutil.copytree(case_dir / "original", dest)
    for path in dest.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    dest.chmod(0o755)
    return dest


def test_module_order_in_config_does_not_matter(parity_root, converted, tmp_path):
    case = CASES[0]
    source = _copy_release(parity_root / "flextok" / case, tmp_path / "release")
    config = json.loads((source / "config.json").read_text())
    for part in ("encoder", "decoder"):
        modules = config[part]["module_dict"]
        config[part]["module_dict"] = dict(reversed(list(modules.items())))
    # what huggingface_hub's save_pretrained does to the file: sorted keys
    (source / "config.json").write_text(json.dumps(config, sort_keys=True))
    assert convert_main(["flextok", str(source), str(tmp_path / "out")]) == 0
    reference = AutoModel.from_pretrained(converted(case))
    shuffled = AutoModel.from_pretrained(tmp_path / "out")
    assert _config_fields(shuffled) == _config_fields(reference)
    for key, value in reference.state_dict().items():
        assert torch.equal(shuffled.state_dict()[key], value), key


def test_single_safetensors_file_with_metadata_config(parity_root, converted, tmp_path):
    """SOURCE = model.safetensors alone: the config comes from its metadata; the VAE folder sits next to it."""
    case = CASES[0]
    source = _copy_release(parity_root / "flextok" / case, tmp_path / "release")
    (source / "config.json").unlink()
    assert convert_main(["flextok", str(source / "model.safetensors"), str(tmp_path / "out")]) == 0
    reference = AutoModel.from_pretrained(converted(case))
    model = AutoModel.from_pretrained(tmp_path / "out")
    assert _config_fields(model) == _config_fields(reference)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.state_dict().items())


def test_vae_architecture_from_shapes_with_preset_overrides(parity_root, converted, tmp_path):
    """Without a local VAE folder the VAE config is inferred from shapes; GroupNorm groups come from the overrides."""
    case = CASES[0]
    source = _copy_release(parity_root / "flextok" / case, tmp_path / "release")
    vae_config = json.loads((source / "vae" / "config.json").read_text())
    shutil.rmtree(source / "vae")
    if vae_config["block_out_channels"][0] % 32:
        # the released default of 32 groups does not divide this VAE's channels
        with pytest.raises(ConversionError, match="could not build FlexTokModel"):
            convert(source)
    overrides = tmp_path / "presets.json"
    overrides.write_text(json.dumps({"vae": {"norm_num_groups": vae_config["norm_num_groups"],
                                             "sample_size": vae_config["sample_size"]}}))
    assert convert_main(["flextok", str(source), str(tmp_path / "out"), "--preset-overrides", str(overrides)]) == 0
    reference = AutoModel.from_pretrained(converted(case)).eval()
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    pixel_values = load_file(parity_root / "flextok" / case / "io.safetensors")["pixel_values"]
    with torch.no_grad():
        assert torch.equal(model.vae_encode(pixel_values), reference.vae_encode(pixel_values))


def _original_sincos_table(dim: int, rows: int, columns: int) -> torch.Tensor:
    """The original's fixed table, transcribed step by step from its description: a meshgrid over (columns, rows) with
    "ij" indexing flattened, [sin, cos] of the first then of the second index, and that flat sequence read back as a
    row-major rows x columns grid (so entry n of the returned [rows * columns, dim] table is entry n of the sequence)."""
    first, second = torch.meshgrid(torch.arange(columns, dtype=torch.float32), torch.arange(rows, dtype=torch.float32),
                                   indexing="ij")
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    first, second = first.reshape(-1, 1) * omega, second.reshape(-1, 1) * omega
    return torch.cat([first.sin(), first.cos(), second.sin(), second.cos()], dim=1)


@pytest.mark.parametrize("rows, columns", [(4, 4), (2, 3), (3, 2), (3, 5)])
def test_fresh_position_tables_follow_the_original_on_rectangles(rows, columns):
    expected = _original_sincos_table(16, rows, columns)
    torch.testing.assert_close(_flextok_sincos_table(16, rows, columns), expected, atol=1e-6, rtol=0)
    tiny = FlexTokConfig(**TINY_FLEXTOK)
    factor = tiny.vae_downsample_factor * tiny.patch_size
    config = FlexTokConfig(**(TINY_FLEXTOK | {"image_size": [factor * rows, factor * columns]}))
    assert config.grid_shape == (rows, columns)
    model = FlexTokModel(config)
    for embeddings, width in ((model.encoder.embeddings, config.encoder_hidden_size),
                              (model.decoder.embeddings, config.decoder_hidden_size)):
        assert embeddings.position_embedding.shape == (rows * columns, width)
        torch.testing.assert_close(embeddings.position_embedding, _original_sincos_table(width, rows, columns),
                                   atol=1e-6, rtol=0)


def test_rectangular_position_table_release(parity_root, converted, tmp_path):
    """A release whose position tables are rows x columns (the original takes any `max_sizes`): its tables are the
    top-left corner of the square case's, so on every image it accepts it must give the square model's tokens and
    decodes, and it refuses what the table does not cover."""
    case = CASES[0]
    reference = AutoModel.from_pretrained(converted(case)).eval()
    rows, columns = reference.config.grid_shape
    pixel_factor = reference.config.vae_downsample_factor * reference.config.patch_size
    io = load_file(parity_root / "flextok" / case / "io.safetensors")
    for shape in ((rows, columns - 1), (rows - 1, columns)):
        source = _copy_release(parity_root / "flextok" / case, tmp_path / f"release_{shape[0]}x{shape[1]}")
        state = load_file(source / "model.safetensors")
        config = json.loads((source / "config.json").read_text())
        for part, module in (("encoder", "enc_posemb_module"), ("decoder", "dec_patches_posemb_module")):
            key = f"{part}.module_dict.{module}.posembs"
            state[key] = state[key][..., : shape[0], : shape[1]].contiguous()
            config[part]["module_dict"][module]["max_sizes"] = list(shape)
        save_file(state, source / "model.safetensors")
        (source / "config.json").write_text(json.dumps(config))
        out = tmp_path / f"out_{shape[0]}x{shape[1]}"
        assert convert_main(["flextok", str(source), str(out)]) == 0
        model = AutoModel.from_pretrained(out).eval()
        height, width = shape[0] * pixel_factor, shape[1] * pixel_factor
        assert model.config.image_size == [height, width] and model.config.grid_shape == shape
        processor = AutoImageProcessor.from_pretrained(out)
        assert (processor.crop_size["height"], processor.crop_size["width"]) == (height, width)
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
        assert processor(image, return_tensors="pt")["pixel_values"].shape == (1, 3, height, width)
        for crop in ((height, width), (height - pixel_factor, width - pixel_factor)):
            pixels = io["pixel_values"][..., : crop[0], : crop[1]]
            with torch.no_grad():
                ours, theirs = model.encode(pixels), reference.encode(pixels)
                assert torch.equal(ours.tokens, theirs.tokens)
                torch.testing.assert_close(ours.encoder_output, theirs.encoder_output, atol=1e-6, rtol=0)
        noise = torch.randn(2, reference.config.vae_latent_channels, height // reference.config.vae_downsample_factor,
                            width // reference.config.vae_downsample_factor, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            decoded = model.decode(io["tokens"], num_steps=2, guidance_scale=1.0,
                                   generator=torch.Generator().manual_seed(3))
            assert decoded.reconstruction.shape == (2, 3, height, width)  # the config's size by default
            ours = model.decode(io["tokens"], num_steps=2, guidance_scale=3.0, noise=noise)
            theirs = reference.decode(io["tokens"], num_steps=2, guidance_scale=3.0, noise=noise)
        torch.testing.assert_close(ours.reconstruction, theirs.reconstruction, atol=1e-6, rtol=0)
        too_big = io["pixel_values"][..., : rows * pixel_factor, : columns * pixel_factor]
        with pytest.raises(ValueError, match=f"at most {shape[0] * reference.config.patch_size}x"
                                             f"{shape[1] * reference.config.patch_size} \\(its {shape[0]}x{shape[1]} "
                                             "position table\\)"):
            model.encode(too_big)


def test_zero_null_condition_release(parity_root, tmp_path):
    """`ZeroNullCond` has no weights: the converted model uses zeros as the null condition."""
    from safetensors.torch import save_file

    case_dir = parity_root / "flextok" / CASES[0]
    source = _copy_release(case_dir, tmp_path / "release")
    config = json.loads((source / "config.json").read_text())
    modules = config["decoder"]["module_dict"]
    name = next(k for k, m in modules.items() if m["_target_"].endswith("NullCond"))
    modules[name] = {"_target_": "flextok.model.preprocessors.nullcond.ZeroNullCond", "read_write_key": "dec_quants",
                     "eval_drop_flag_read_key": "eval_dropout_mask", "dropout_prob": 0.1}
    (source / "config.json").write_text(json.dumps(config))
    state = {k: v for k, v in load_file(case_dir / "original" / "model.safetensors").items() if "nullcond" not in k}
    (source / "model.safetensors").chmod(0o644)
    save_file(state, source / "model.safetensors")
    model = convert(source).model
    assert model.config.null_condition == "zeros" and model.config.cfg_dropout_prob == 0.1
    assert model.decoder.embeddings.null_condition is None


def test_release_without_register_positions(parity_root, converted, tmp_path):
    """A decoder config without the register position module converts with a zero table."""
    from safetensors.torch import save_file

    case_dir = parity_root / "flextok" / CASES[0]
    source = _copy_release(case_dir, tmp_path / "release")
    config = json.loads((source / "config.json").read_text())
    modules = config["decoder"]["module_dict"]
    registers_key = next(m["write_key"] for m in modules.values() if m["_target_"].endswith("LinearLayer"))
    name = next(k for k, m in modules.items() if m["_target_"].endswith("PositionalEmbeddingAdder")
                and m["read_key"] == registers_key)
    del modules[name]
    (source / "config.json").write_text(json.dumps(config))
    state = load_file(case_dir / "original" / "model.safetensors")
    del state[f"decoder.module_dict.{name}.posembs"]
    (source / "model.safetensors").chmod(0o644)
    save_file(state, source / "model.safetensors")
    result = convert(source)
    assert any("no register position embedding" in note for note in result.notes)
    table = result.model.decoder.embeddings.register_position_embedding
    assert torch.equal(table, torch.zeros_like(table))
    reference = AutoModel.from_pretrained(converted(CASES[0])).state_dict()
    for key, value in result.model.state_dict().items():
        assert "register_position" in key or torch.equal(value, reference[key]), key


def test_bfloat16_conversion_keeps_the_vae_in_float32(parity_root, tmp_path):
    case_dir = parity_root / "flextok" / CASES[0]
    assert convert_main(["flextok", str(case_dir / "original"), str(tmp_path / "out"), "--dtype", "bfloat16"]) == 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as handle:
        stored = {key: handle.get_slice(key).get_dtype() for key in handle.keys()}
    assert {d for k, d in stored.items() if k.startswith("vae.")} == {"F32"}
    assert stored["decoder.layers.0.self_attn.q_proj.weight"] == "BF16"
    model, info = AutoModel.from_pretrained(tmp_path / "out", dtype=torch.bfloat16, output_loading_info=True)
    assert not any(info.values()), info
    assert all(p.dtype == torch.float32 for p in model.vae.parameters())
    assert model.decoder.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    io = load_file(case_dir / "io.safetensors")
    with torch.no_grad():
        decoded = model.eval().decode(io["tokens"], num_steps=2, noise=io["decode_noise"])
    assert decoded.reconstruction.dtype == torch.float32 and torch.isfinite(decoded.reconstruction).all()


def test_conversion_errors_name_the_problem(parity_root, tmp_path):
    case_dir = parity_root / "flextok" / CASES[0]
    source = _copy_release(case_dir, tmp_path / "release")
    config = json.loads((source / "config.json").read_text())
    packer = next(m for m in config["encoder"]["module_dict"].values() if m["_target_"].endswith("SequencePacker"))
    packer["mask_mode"] = "full"
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="mask_mode='full'.*'causal_last'"):
        convert(source)
    # a stray tensor is reported by name
    from safetensors.torch import save_file

    shutil.copy(case_dir / "original" / "config.json", source / "config.json")
    state = load_file(case_dir / "original" / "model.safetensors")
    state["encoder.module_dict.enc_transformer.extra_scale"] = torch.ones(1)
    (source / "model.safetensors").chmod(0o644)
    save_file(state, source / "model.safetensors")
    with pytest.raises(ConversionError, match="extra_scale"):
        convert(source)
    # DEST must be empty unless --force
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "file").write_text("x")
    assert convert_main(["flextok", str(case_dir / "original"), str(tmp_path / "dest")]) == 2


# ---------------------------------------------------------------- behaviour on the tiny random model


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return FlexTokModel(FlexTokConfig(**TINY_FLEXTOK)).eval()


def _pixels(batch_size=2, seed=0):
    return torch.rand(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_encode_prefix_equals_prefix_of_full_encoding(tiny):
    pixel_values = _pixels()
    with torch.no_grad():
        full = tiny.encode(pixel_values)
        for k in range(1, tiny.config.num_latent_tokens + 1):
            prefix = tiny.encode(pixel_values, num_tokens=k)
            assert torch.equal(prefix.tokens, full.tokens[:, :k])
            torch.testing.assert_close(prefix.encoder_output, full.encoder_output[:, :k], atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="1 to 8 tokens"):
        tiny.encode(pixel_values, num_tokens=9)


def test_decode_every_prefix_length(tiny):
    pixel_values = _pixels()
    with torch.no_grad():
        tokens = tiny.encode(pixel_values).tokens
        images = []
        for k in range(1, tiny.config.num_latent_tokens + 1):
            decoded = tiny.decode(tokens[:, :k], **flextok_decode_kwargs(2))
            assert decoded.reconstruction.shape == pixel_values.shape
            images.append(decoded.reconstruction)
            # padded full-length ids with per-image lengths give the same images
            padded = torch.cat([tokens[:, :k], torch.zeros_like(tokens[:, k:])], dim=1)
            same = tiny.decode(padded, token_lengths=torch.tensor([k, k]), **flextok_decode_kwargs(2))
            torch.testing.assert_close(same.reconstruction, decoded.reconstruction, atol=1e-6, rtol=1e-6)
    # more tokens condition the decoder differently
    assert not torch.allclose(images[0], images[-1])
    mixed = tiny.decode(tokens, token_lengths=torch.tensor([1, 8]), **flextok_decode_kwargs(2)).reconstruction
    with torch.no_grad():
        first = tiny.decode(tokens[:, :1], **flextok_decode_kwargs(2)).reconstruction
    torch.testing.assert_close(mixed[0], first[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[1], images[-1][1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="1 to 8 tokens"):
        tiny.decode(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="token_lengths"):
        tiny.decode(tokens, token_lengths=torch.tensor([0, 8]))


def test_decode_is_reproducible_and_noise_explicit(tiny):
    with torch.no_grad():
        tokens = tiny.encode(_pixels()).tokens
        noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
        a = tiny.decode(tokens, noise=noise, num_steps=3).reconstruction
        b = tiny.decode(tokens, noise=noise.clone(), num_steps=3).reconstruction
        assert torch.equal(a, b)
        # generator= draws one [1, C, h, w] tensor per image, in order
        generator = torch.Generator().manual_seed(5)
        drawn = torch.cat([torch.randn(1, 4, 8, 8, generator=generator) for _ in range(2)])
        from_generator = tiny.decode(tokens, generator=torch.Generator().manual_seed(5), num_steps=3).reconstruction
        assert torch.equal(from_generator, tiny.decode(tokens, noise=drawn, num_steps=3).reconstruction)
        assert not torch.equal(a, from_generator)
        # smaller noise decodes a smaller image (the original's vae_image_sizes): image_size follows the noise
        assert tiny.decode(tokens, noise=noise[..., :4, :6], num_steps=1).reconstruction.shape == (2, 3, 16, 24)
    with pytest.raises(ValueError, match=r"noise must be a tensor of shape \[2, 4, 8, 8\].*\(2, 4, 4, 4\)"):
        tiny.decode(tokens, noise=torch.zeros(2, 4, 4, 4), image_size=32)
    with pytest.raises(ValueError, match=r"noise must be a tensor of shape \[2, 4, 8, 8\].*\(2, 3, 8, 8\)"):
        tiny.decode(tokens, noise=torch.zeros(2, 3, 8, 8))


def test_vae_runs_image_by_image_with_the_batch_results(tiny):
    """The VAE sees one image at a time (peak memory of one image), and encodes, posterior samples and decodes as the
    whole batch does."""
    pixel_values = _pixels(3, seed=6)

    def through_the_vae():
        with torch.no_grad():
            encoded = [tiny.vae_encode(pixel_values, sample_posterior=flag, generator=torch.Generator().manual_seed(2))
                       for flag in (False, True)]
            return encoded + [tiny.vae_decode(encoded[0])]

    batch_sizes = []
    hooks = [part.register_forward_hook(lambda module, args, output: batch_sizes.append(args[0].shape[0]))
             for part in (tiny.vae.encoder, tiny.vae.decoder)]
    try:
        sliced = through_the_vae()
    finally:
        for hook in hooks:
            hook.remove()
    assert batch_sizes == [1] * 9
    tiny.vae.disable_slicing()
    try:
        whole = through_the_vae()
    finally:
        tiny.vae.enable_slicing()
    for ours, batch in zip(sliced, whole):
        torch.testing.assert_close(ours, batch, atol=1e-5, rtol=1e-5)
    # the sample is not the mode: the posterior's random draw is really taken
    assert not torch.allclose(sliced[0], sliced[1])
    assert FlexTokModel(tiny.config).vae.use_slicing


def test_guidance_settings(tiny):
    with torch.no_grad():
        tokens = tiny.encode(_pixels()).tokens
        noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))

        def run(**kwargs):
            return tiny.decode(tokens, noise=noise, num_steps=3, **kwargs).vae_latents

        plain_cfg = run(guidance_scale=1.0, guidance_type="cfg")
        plain_apg = run(guidance_scale=1.0, guidance_type="apg")
        assert torch.equal(plain_cfg, plain_apg)  # scale 1 runs no unconditional branch
        cfg, apg = run(guidance_scale=4.0, guidance_type="cfg"), run(guidance_scale=4.0, guidance_type="apg")
        assert not torch.allclose(cfg, plain_cfg) and not torch.allclose(apg, cfg)

        # one CFG step by hand from the single-step velocities
        codes = tiny.tokens_to_latents(tokens)
        cond = tiny.predict_velocity(codes, noise, 1.0).velocity
        uncond = tiny.predict_velocity(codes, noise, 1.0, unconditional=True).velocity
        one_step = tiny.decode(tokens, noise=noise, num_steps=1, guidance_scale=4.0, guidance_type="cfg").vae_latents
        torch.testing.assert_close(one_step, noise - (uncond + 4.0 * (cond - uncond)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="guidance_type must be one of"):
        tiny.decode(tokens, guidance_type="pag")
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        tiny.decode(tokens, num_steps=0)


def test_null_condition_variants():
    torch.manual_seed(0)
    model = FlexTokModel(FlexTokConfig(**(TINY_FLEXTOK | {"null_condition": "zeros"}))).eval()
    assert model.decoder.embeddings.null_condition is None
    codes = model.tokens_to_latents(torch.zeros(1, 8, dtype=torch.long))
    registers = model.decoder.embeddings.embed_registers(codes, torch.tensor([8]), torch.tensor([True]))
    assert torch.equal(registers, torch.zeros_like(registers))


def test_training_mode_nested_dropout_and_flow_loss(tiny):
    model = FlexTokModel(FlexTokConfig(**TINY_FLEXTOK))
    model.load_state_dict(tiny.state_dict())
    model.train()
    pixel_values = _pixels(4)
    out = model(pixel_values, labels=pixel_values, generator=torch.Generator().manual_seed(0))
    again = model(pixel_values, labels=pixel_values, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.loss, again.loss) and torch.equal(out.keep_k, again.keep_k)
    # nested dropout samples powers of two (config.nested_dropout_mode="pow2") per image
    kept = torch.cat([model(pixel_values, generator=torch.Generator().manual_seed(s)).keep_k for s in range(8)])
    assert set(kept.tolist()) <= {1, 2, 4, 8} and len(set(kept.tolist())) > 1
    assert out.reconstruction.shape == pixel_values.shape and out.loss.requires_grad

    # the loss is the rectified-flow MSE at the given t, noise and kept registers
    noise = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    timesteps, keep_k = torch.tensor([0.1, 0.4, 0.7, 1.0]), torch.tensor([1, 2, 4, 8])
    model.config.cfg_dropout_prob = 0.0
    out = model(pixel_values, labels=pixel_values, noise=noise, timesteps=timesteps, keep_k=keep_k)
    with torch.no_grad():
        clean = model.vae_encode(pixel_values)
        codes = model.encode(pixel_values).latents
        noisy = timesteps[:, None, None, None] * noise + (1 - timesteps[:, None, None, None]) * clean
        velocity = model.predict_velocity(codes, noisy, timesteps, keep_k=keep_k).velocity
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(velocity, noise - clean), atol=1e-6, rtol=1e-5)
    out.loss.backward()
    assert model.encoder.layers[0].self_attn.q_proj.weight.grad is not None  # FSQ passes gradients straight through
    assert model.vae.encoder.conv_in.weight.grad is None  # the VAE stays frozen
    # decode settings are accepted (one set of kwargs for both modes), anything else is an error
    model(pixel_values, labels=pixel_values, num_steps=3, guidance_scale=2.0, generator=torch.Generator())
    with pytest.raises(ValueError, match=r"unexpected arguments \['num_step'\]"):
        model(pixel_values, labels=pixel_values, num_step=3)
    with pytest.raises(ValueError, match=r"keep_k must be 4 integers in \[1, 8\]"):
        model(pixel_values, labels=pixel_values, keep_k=torch.tensor([0, 1, 2, 3]))


def test_attention_scale_and_mask():
    config = FlexTokConfig(**TINY_FLEXTOK)
    model = FlexTokModel(config)
    assert model.encoder.layers[0].self_attn.scaling == 8.0 / 16
    assert model.decoder.layers[0].self_attn.scaling == 8.0 / 16
    mask = register_attention_mask(3, 2)[0, 0]
    expected = torch.tensor(
        [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool
    )
    assert torch.equal(mask, expected)


@pytest.mark.parametrize(
    "name, millions",
    [("flextok_d12_d12_in1k", 341.65), ("flextok_d18_d18_in1k", 949.73), ("flextok_d18_d28_dfn", 2540.88)],
)
def test_released_variant_sizes(name, millions):
    config = FlexTokConfig.from_variant(name)
    assert config.codebook_size == 64000 and config.num_latent_tokens == 256 and config.grid_shape == (16, 16)
    with torch.device("meta"):
        model = FlexTokModel(config)
    count = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    assert abs(count / 1e6 - millions) < 0.01
    assert config.decoder_intermediate_size == {768: 2048, 1152: 3072, 1792: 4778}[config.decoder_hidden_size]
    with pytest.raises(ValueError, match="unknown FlexTok variant"):
        FlexTokConfig.from_variant("flextok_d99")


def test_config_validation():
    # huggingface_hub wraps the ValueError of `validate_architecture` in StrictDataclassClassValidationError
    with pytest.raises(Exception, match="codebook_size must be the product"):
        FlexTokConfig(fsq_levels=[8, 5], codebook_size=41)
    with pytest.raises(Exception, match="guidance_type must be one of"):
        FlexTokConfig(guidance_type="pag")
    with pytest.raises(Exception, match="image_size \\(100\\) must be an int or a \\[height, width\\] pair of positive multiples"):
        FlexTokConfig(image_size=100)
    # like the original, any register count builds and runs; only pow2 nested-dropout TRAINING needs a power of two
    FlexTokConfig(num_latent_tokens=6)
    from vistok.modeling.scheduling_flextok import FlexTokTrainingObjective

    with pytest.raises(ValueError, match="must then be a power of two; got 6"):
        FlexTokTrainingObjective(6, "uniform", "pow2", 0.0).sample_keep_k(4, torch.Generator().manual_seed(0), "cpu")
    kept = FlexTokTrainingObjective(6, "uniform", "uniform_pow2", 0.0).sample_keep_k(
        64, torch.Generator().manual_seed(0), "cpu"
    )
    # uniform 1..6 rounded up to a power of two, capped at 6: {1, 2, 4, 8 -> 6}
    assert set(kept.tolist()) == {1, 2, 4, 6}


def test_processor_matches_original_transforms():
    from torchvision import transforms

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 410, 3), dtype=np.uint8))
    original = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(256), transforms.ToTensor(),
        transforms.Normalize(mean=[0.5] * 3, std=[0.5] * 3),
    ])(image)[None]
    pil = FlexTokImageProcessorPil()(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pil, original, atol=1e-5, rtol=0)
    fast = FlexTokImageProcessor()(image, return_tensors="pt")["pixel_values"]
    assert fast.shape == (1, 3, 256, 256) and fast.min() >= -1 and fast.max() <= 1
    assert (fast - original).abs().mean() < 0.02
    assert vistok.FlexTokImageProcessor is FlexTokImageProcessor
