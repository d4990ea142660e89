"""TiTok: parity with the original code through `vistok-convert` + the Auto classes, conversion errors, variants,
preprocessing and TiTok-specific decode paths."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, AutoModel

import vistok
from conftest import parity_case_dir, parity_cases
from vistok.conversion.__main__ import main as convert_main
from vistok.modeling.configuration_titok import TITOK_VARIANTS, TiTokConfig


# every case folder shipped with the fixtures (CI holds further ones)
CASES = parity_cases("titok")
ATOL = RTOL = 1e-4


def _to_tokens_layout(tensor):
    # original layout [B, C, 1, N] -> vistok [B, N, C]
    return tensor.squeeze(2).transpose(1, 2)


def _convert(case_dir, dest, *extra):
    args = ["titok", str(case_dir / "original"), str(dest)]
    if (case_dir / "presets.json").is_file():
        args += ["--preset-overrides", str(case_dir / "presets.json")]
    assert convert_main(args + list(extra)) == 0


def _check_case(case_dir, dest):
    io = load_file(case_dir / "io.safetensors")
    model, info = AutoModel.from_pretrained(dest, output_loading_info=True)
    assert isinstance(model, vistok.TiTokModel) and not any(info.values()), info
    assert isinstance(AutoImageProcessor.from_pretrained(dest), vistok.TiTokImageProcessor)
    model.eval()
    text = {"text_guidance": io["text_guidance"]} if "text_guidance" in io else {}
    with torch.no_grad():
        encoded = model.encode(io["pixel_values"])
        torch.testing.assert_close(encoded.encoder_output, _to_tokens_layout(io["encoder_output"]), atol=ATOL, rtol=RTOL)
        if "codes" in io:
            assert torch.equal(encoded.tokens, io["codes"].squeeze(1))
            torch.testing.assert_close(encoded.latents, _to_tokens_layout(io["quantized_latents"]), atol=ATOL, rtol=RTOL)
            decoded = model.decode(encoded.tokens, **text)
        else:
            assert encoded.tokens is None
            torch.testing.assert_close(encoded.latents, _to_tokens_layout(io["posterior_mean"]), atol=ATOL, rtol=RTOL)
            torch.testing.assert_close(
                encoded.posterior_logvar, _to_tokens_layout(io["posterior_logvar"]), atol=ATOL, rtol=RTOL
            )
            decoded = model.decode(encoded.latents, **text)
            from_sample = model.decode(_to_tokens_layout(io["posterior_sample"]), **text).reconstruction
            torch.testing.assert_close(from_sample, io["reconstruction_from_sample"], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(decoded.reconstruction, io["reconstruction"], atol=ATOL, rtol=RTOL)
        if "proxy_logits" in io:
            torch.testing.assert_close(decoded.proxy_logits, io["proxy_logits"], atol=ATOL, rtol=RTOL)
            assert torch.equal(decoded.proxy_logits.argmax(1), io["proxy_codes"])
            stage1 = model.decode_proxy_codes(io["proxy_codes"]).clamp(0, 1)
            torch.testing.assert_close(stage1, io["stage1_reconstruction_clamped"], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("case", CASES)
def test_parity_hub_layout(parity_root, case, tmp_path):
    case_dir = parity_case_dir(parity_root, "titok", case)
    _convert(case_dir, tmp_path / "converted")
    _check_case(case_dir, tmp_path / "converted")


@pytest.mark.parametrize("case", CASES)
def test_parity_bin_yaml_layout(parity_root, case, tmp_path):
    """The `torch.save(state_dict)` `.bin` + inference yaml layout (demo_util / fun-research repos)."""
    case_dir = parity_case_dir(parity_root, "titok", case)
    if not (case_dir / "original" / "config.yaml").is_file():
        pytest.skip(f"{case} ships no inference yaml")
    state = load_file(case_dir / "original" / "model.safetensors")
    source = tmp_path / "release"
    source.mkdir()
    torch.save(state, source / "tokenizer.bin")
    args = ["titok", str(source / "tokenizer.bin"), str(tmp_path / "converted"),
            "--config", str(case_dir / "original" / "config.yaml")]
    if (case_dir / "presets.json").is_file():
        args += ["--preset-overrides", str(case_dir / "presets.json")]
    assert convert_main(args) == 0
    _check_case(case_dir, tmp_path / "converted")


def _vq_case(parity_root):
    """The first VQ case without the two-stage pixel decoder (name-independent)."""
    for case in CASES:
        case_dir = parity_case_dir(parity_root, "titok", case)
        io = load_file(case_dir / "io.safetensors")
        if "codes" in io and "proxy_logits" not in io:
            return case_dir
    pytest.fail("no single-stage VQ TiTok parity case found")


def test_converted_bfloat16_keeps_codebook_fp32(parity_root, tmp_path):
    case_dir = _vq_case(parity_root)
    _convert(case_dir, tmp_path / "bf16", "--dtype", "bfloat16")
    model = AutoModel.from_pretrained(tmp_path / "bf16")
    assert model.encoder.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert model.quantizer.embedding.dtype == torch.float32


@pytest.fixture
def release_copy(parity_root, tmp_path):
    case_dir = _vq_case(parity_root)
    source = tmp_path / "release"
    shutil.copytree(case_dir / "original", source)
    return source, case_dir / "presets.json"


def _run_cli(capsys, *args):
    code = convert_main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_conversion_rejects_missing_and_extra_tensors(release_copy, tmp_path, capsys):
    source, presets = release_copy
    state = load_file(source / "model.safetensors")
    missing = dict(state)
    missing.pop("decoder.ln_post.weight")
    save_file(missing, source / "model.safetensors")
    code, err = _run_cli(capsys, "titok", source, tmp_path / "a", "--preset-overrides", presets)
    assert code == 2 and "model tensors missing from the checkpoint" in err and "decoder.post_layernorm.weight" in err

    save_file(state | {"decoder.extra_head.weight": torch.zeros(3)}, source / "model.safetensors")
    code, err = _run_cli(capsys, "titok", source, tmp_path / "b", "--preset-overrides", presets)
    assert code == 2 and "source tensors with no mapping" in err and "decoder.extra_head.weight" in err

    bad = dict(state)
    bad["decoder.ln_post.weight"] = torch.zeros(5)
    save_file(bad, source / "model.safetensors")
    code, err = _run_cli(capsys, "titok", source, tmp_path / "c", "--preset-overrides", presets)
    assert code == 2 and "shape mismatches" in err


def test_conversion_rejects_unknown_preset_corrupt_file_and_non_empty_dest(release_copy, tmp_path, capsys):
    source, presets = release_copy
    code, err = _run_cli(capsys, "titok", source, tmp_path / "a")
    preset = json.loads((source / "config.json").read_text())["model"]["vq_model"]["vit_enc_model_size"]
    assert code == 2 and f"unknown preset '{preset}'" in err and "--preset-overrides" in err

    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("x")
    code, err = _run_cli(capsys, "titok", source, dest, "--preset-overrides", presets)
    assert code == 2 and "--force" in err
    assert _run_cli(capsys, "titok", source, dest, "--preset-overrides", presets, "--force")[0] == 0

    (source / "model.safetensors").write_bytes(b"not a safetensors file")
    code, err = _run_cli(capsys, "titok", source, tmp_path / "b", "--preset-overrides", presets)
    assert code == 2 and "could not read safetensors file" in err

    code, err = _run_cli(capsys, "nosuch", source, tmp_path / "c")
    assert code == 2 and "unknown architecture" in err


def test_conversion_rejects_executable_pickles(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    source = tmp_path / "evil.bin"
    torch.save({"x": Payload()}, source)
    (tmp_path / "config.yaml").write_text("model: {vq_model: {}}\n")
    code, err = _run_cli(capsys, "titok", source, tmp_path / "out", "--config", tmp_path / "config.yaml")
    assert code == 2 and "weights_only=True" in err
    assert "executed" not in capsys.readouterr().out


def test_preset_overrides_must_match_weights(release_copy, tmp_path, capsys):
    source, presets = release_copy
    overrides = json.loads(presets.read_text())
    preset = json.loads((source / "config.json").read_text())["model"]["vq_model"]["vit_enc_model_size"]
    overrides[preset]["hidden_size"] = 999
    bad = tmp_path / "presets.json"
    bad.write_text(json.dumps(overrides))
    code, err = _run_cli(capsys, "titok", source, tmp_path / "out", "--preset-overrides", bad)
    assert code == 2 and "hidden_size=999" in err



def test_crop_size_up_to_one_patch_larger_than_the_grid(release_copy, tmp_path, capsys):
    """The original takes grid = crop_size // patch_size: a crop of grid * p + r (r < p) pixels feeds the same grid
    (the patch convolution drops the last r rows/columns) and decodes grid * p pixels; r >= p is a different grid."""
    source, presets = release_copy
    config = json.loads((source / "config.json").read_text())
    vq = config["model"]["vq_model"]
    image_size, patch = config["dataset"]["preprocessing"]["crop_size"], vq["vit_enc_patch_size"]
    config["dataset"]["preprocessing"]["crop_size"] = image_size + patch - 1
    (source / "config.json").write_text(json.dumps(config))
    assert _run_cli(capsys, "titok", source, tmp_path / "out", "--preset-overrides", presets)[0] == 0
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    processor = AutoImageProcessor.from_pretrained(tmp_path / "out")
    assert model.config.image_size == image_size
    assert processor.crop_size == {"height": image_size + patch - 1, "width": image_size + patch - 1}
    pixel_values = torch.rand(2, 3, image_size + patch - 1, image_size + patch - 1)
    with torch.no_grad():
        full = model.encode(pixel_values)
        cropped = model.encode(pixel_values[:, :, :image_size, :image_size])
        assert torch.equal(full.tokens, cropped.tokens)
        text = ({"text_guidance": torch.zeros(2, model.config.text_context_length, model.config.text_embed_dim)}
                if model.config.use_text_guidance else {})
        assert model.decode(full.tokens, **text).reconstruction.shape[-2:] == (image_size, image_size)
    config["dataset"]["preprocessing"]["crop_size"] = image_size + patch
    (source / "config.json").write_text(json.dumps(config))
    code, err = _run_cli(capsys, "titok", source, tmp_path / "out2", "--preset-overrides", presets)
    assert code == 2 and f"crop_size {image_size + patch}" in err


# exact parameter counts of the released tokenizers, computed with the original classes (see the notes)
RELEASED_PARAMS_M = {"titok_l32": 641.05, "titok_b64": 204.81, "titok_s128": 83.67, "titok_bl64_vq8k": 390.02,
                     "titok_sl256_vq8k": 330.26, "titok_ll32_vae": 606.88, "titok_bl128_vae": 389.58,
                     "tatitok_bl32_vq": 390.80, "tatitok_sl128_vae": 330.28}


@pytest.mark.parametrize("variant", sorted(RELEASED_PARAMS_M))
def test_released_variant_sizes(variant):
    config = TiTokConfig.from_variant(variant)
    with torch.device("meta"):
        model = vistok.TiTokModel(config)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - RELEASED_PARAMS_M[variant]) < 0.01, count
    assert TITOK_VARIANTS[variant]["hub_id"].count("/") == 1
    with pytest.raises(ValueError, match="unknown TiTok variant"):
        TiTokConfig.from_variant("titok_xxl")


def test_invalid_configs_are_rejected():
    with pytest.raises(Exception, match="quantize_mode"):
        TiTokConfig(quantize_mode="fsq")
    with pytest.raises(Exception, match="use_pixel_decoder"):
        TiTokConfig(is_legacy=True, use_pixel_decoder=False)
    with pytest.raises(Exception, match="divisible"):
        TiTokConfig(image_size=250)


def test_encoder_and_decoder_patch_sizes_may_differ():
    """The original builds the encoder and decoder grids independently (crop // patch each): an encoder on an 6x6 grid
    of 8-px patches with a decoder on a 3x3 grid of 16-px patches still reconstructs the full 48x48 image."""
    config = TiTokConfig(
        image_size=48, patch_size=8, decoder_patch_size=16, num_latent_tokens=5, token_size=8, codebook_size=64,
        encoder_hidden_size=40, encoder_num_hidden_layers=1, encoder_num_attention_heads=5,
        decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2, is_legacy=False, use_pixel_decoder=False,
    )
    model = vistok.TiTokModel(config).eval()
    assert model.encoder.embeddings.position_embedding.shape == (6 * 6 + 1, 40)
    assert model.decoder.embeddings.position_embedding.shape == (3 * 3 + 1, 32)
    with torch.no_grad():
        tokens = model.encode(torch.rand(2, 3, 48, 48)).tokens
        assert tokens.shape == (2, 5)
        assert model.decode(tokens).reconstruction.shape == (2, 3, 48, 48)


def _tiny_tatitok():
    from testers.titok import TESTERS

    return next(t for t in TESTERS if t.name == "tatitok-vq")


def test_text_guidance_is_required_and_checked():
    tester = _tiny_tatitok()
    model = tester.make_model()
    with torch.no_grad():
        tokens = model.encode(tester.make_pixel_values(2)).tokens
        with pytest.raises(ValueError, match="needs `text_guidance`"):
            model.decode(tokens)
        with pytest.raises(ValueError, match=r"text_guidance must have shape \[2, 5, 16\]"):
            model.decode(tokens, text_guidance=torch.zeros(2, 4, 16))
        first = model.decode(tokens, **tester.make_decode_kwargs(2)).reconstruction
        other = model.decode(tokens, text_guidance=torch.zeros(2, 5, 16)).reconstruction
    assert not torch.allclose(first, other)


def test_vae_sampling_is_reproducible():
    from testers.titok import TESTERS

    tester = next(t for t in TESTERS if t.name == "titok-vae")
    model = tester.make_model()
    pixel_values = tester.make_pixel_values(2)
    with torch.no_grad():
        mean = model.encode(pixel_values).latents
        a = model.encode(pixel_values, sample_posterior=True, generator=torch.Generator().manual_seed(1)).latents
        b = model.encode(pixel_values, sample_posterior=True, generator=torch.Generator().manual_seed(1)).latents
    assert torch.equal(a, b) and not torch.allclose(a, mean)


def test_pil_processor_matches_original_preprocessing():
    """The PIL backend reproduces the original `Resize(bicubic) -> CenterCrop -> ToTensor` pipeline exactly."""
    from torchvision import transforms

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 411, 3), dtype=np.uint8))
    reference = transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
        transforms.CenterCrop(256),
        transforms.ToTensor(),
    ])(image)
    processor = vistok.TiTokImageProcessorPil()
    ours = processor(image, return_tensors="pt")["pixel_values"][0]
    assert ours.shape == (3, 256, 256)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)
    fast = vistok.TiTokImageProcessor()(image, return_tensors="pt")["pixel_values"][0]
    assert (fast - reference).abs().max() < 0.05


def test_pixel_decoder_slicing_does_not_change_results():
    from testers.titok import TESTERS

    tester = next(t for t in TESTERS if t.name == "titok-legacy-vq")
    model = tester.make_model()
    with torch.no_grad():
        tokens = model.encode(tester.make_pixel_values(5)).tokens
        sliced = model.decode(tokens).reconstruction
        model.set_pixel_decoder_slice_size(None)
        whole = model.decode(tokens).reconstruction
        model.set_pixel_decoder_slice_size(1)
        single = model.decode(tokens).reconstruction
    torch.testing.assert_close(sliced, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(single, whole, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="positive integer"):
        model.set_pixel_decoder_slice_size(0)
