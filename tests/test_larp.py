"""LARP: parity with the original code on every fixture case, conversion edge cases, the stochastic quantizer, the
position tables and the short-clip path. The shared checks run through ``tests/testers/larp.py``."""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoVideoProcessor

import vistok  # noqa: F401
from vistok import LARPConfig, LARPModel
from vistok.conversion.__main__ import convert
from vistok.conversion.__main__ import main as convert_main
from vistok.conversion.utils import ConversionError
from vistok.modeling.modeling_larp import LARPVectorQuantizer, get_larp_3d_sincos_pos_embed


# tolerances of the fixture README (float64 re-runs of the original move projected_z by up to 6e-5)
ATOL = {"projected_z": 5e-4}
DEFAULT_ATOL = 1e-5


def _cases(parity_root):
    root = parity_root / "larp"
    cases = sorted(p for p in root.iterdir() if (p / "original").is_dir()) if root.is_dir() else []
    if not cases:
        pytest.skip(f"no LARP parity cases under {root}")
    return cases


def _convert(case, dest, *extra):
    args = ["larp", str(case / "original"), str(dest)]
    if (case / "presets.json").is_file():
        args += ["--preset-overrides", str(case / "presets.json")]
    assert convert_main(args + list(extra)) == 0


def _close(name, actual, expected, report):
    atol = ATOL.get(name, DEFAULT_ATOL)
    diff = (actual.double() - expected.double()).abs().max().item()
    report[name] = diff
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=1e-4, msg=name)


def test_parity_with_original(parity_root, tmp_path):
    for case in _cases(parity_root):
        dest = tmp_path / case.name
        _convert(case, dest)
        model, info = AutoModel.from_pretrained(dest, output_loading_info=True)
        assert isinstance(model, LARPModel) and not any(info.values()), info
        assert isinstance(AutoVideoProcessor.from_pretrained(dest), vistok.LARPVideoProcessor)
        model.eval()
        io = load_file(case / "io.safetensors")
        report = {}
        with torch.no_grad():
            clip = io["pixel_values"].transpose(1, 2)  # original layout b c t h w -> b t c h w
            encoded = model.encode(clip)
            assert torch.equal(encoded.tokens, io["codes"]), case.name
            _close("projected_z", encoded.encoder_output, io["projected_z"], report)
            _close("quantized", encoded.latents, io["quantized"], report)
            if "encoded" in io:
                _close("encoded", model.decoder_embeddings.post_quant_proj(encoded.latents), io["encoded"], report)
            reconstruction = model.decode(encoded.latents, num_frames=clip.shape[1]).reconstruction
            _close("reconstruction", reconstruction.transpose(1, 2), io["reconstruction"], report)
            from_codes = model.decode(io["codes"], num_frames=clip.shape[1]).reconstruction
            _close("reconstruction_from_codes", from_codes.transpose(1, 2), io["reconstruction_from_codes"], report)
            forward = model(clip)
            torch.testing.assert_close(forward.reconstruction, reconstruction)
            if "prior_logits" in io:
                assert model.prior is not None
                _close("prior_pred", model.prior_predict(encoded.latents), io["prior_pred"], report)
                _close("prior_logits", model.prior_logits(encoded.latents), io["prior_logits"], report)
                torch.testing.assert_close(forward.prior_logits, model.prior_logits(encoded.latents))
            if "pixel_values_short" in io:
                short = io["pixel_values_short"].transpose(1, 2)
                encoded_short = model.encode(short)
                assert torch.equal(encoded_short.tokens, io["codes_short"]), case.name
                decoded = model.decode(encoded_short.tokens, num_frames=short.shape[1]).reconstruction
                _close("reconstruction_short", decoded.transpose(1, 2), io["reconstruction_short"], report)
        print(case.name, {k: f"{v:.2e}" for k, v in report.items()})


def test_conversion_without_prior_weights(parity_root, tmp_path):
    """The upload may leave the prior out although the config names it: the tokenizer alone is converted."""
    case = _cases(parity_root)[0]
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(case / "original" / "config.json", source / "config.json")
    weights = load_file(case / "original" / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("prior_model.")}, source / "model.safetensors")
    assert convert_main(["larp", str(source), str(tmp_path / "dest")]) == 0
    model = AutoModel.from_pretrained(tmp_path / "dest").eval()
    assert model.prior is None and model.config.prior_hidden_size is None
    io = load_file(case / "io.safetensors")
    with torch.no_grad():
        output = model(io["pixel_values"].transpose(1, 2))
    assert torch.equal(output.tokens, io["codes"]) and output.prior_logits is None


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["bottleneck"]["args"].update(norm="layernorm"), "bottleneck norm"),
        (lambda c: c["bottleneck"]["args"]["regularizer"]["args"].update(stochastic=False), "stochastic VQ"),
        (lambda c: c.update(transformer_name="transformer_encoder_fused"), "transformer_name"),
    ],
)
def test_conversion_rejects_unsupported_layouts(parity_root, tmp_path, edit, message):
    case = _cases(parity_root)[0]
    config = json.loads((case / "original" / "config.json").read_text())
    edit(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=message):
        convert(
            "larp", str(case / "original"), str(tmp_path / "dest"), config=str(tmp_path / "config.json")
        )


def test_conversion_checks_the_stored_sincos_tables(parity_root, tmp_path):
    case = _cases(parity_root)[0]
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(case / "original" / "config.json", source / "config.json")
    weights = load_file(case / "original" / "model.safetensors")
    weights["decoder_latent_pe"] = weights["decoder_latent_pe"] + 0.1
    save_file(weights, source / "model.safetensors")
    with pytest.raises(ConversionError, match="decoder_latent_pe is not the sin-cos table"):
        convert("larp", str(source), str(tmp_path / "dest"))


def test_3d_sincos_table_matches_the_formula():
    dim, grid_t, grid_h, grid_w = 8, 3, 2, 5
    table = get_larp_3d_sincos_pos_embed(dim, grid_t, grid_h, grid_w)
    assert table.shape == (grid_t * grid_h * grid_w, dim)

    def sincos(width, position):
        omegas = [1.0 / 10000 ** (k / (width / 2)) for k in range(width // 2)]
        return [math.sin(position * o) for o in omegas] + [math.cos(position * o) for o in omegas]

    for t, h, w in ((0, 0, 0), (2, 1, 4), (1, 0, 3)):
        # MAE layout: the first half of the channels encodes the column, the second the row; time spans all channels
        spatial = sincos(dim // 2, w) + sincos(dim // 2, h)
        expected = torch.tensor([a + b for a, b in zip(spatial, sincos(dim, t))])
        torch.testing.assert_close(table[(t * grid_h + h) * grid_w + w], expected.float(), atol=1e-6, rtol=0)


def test_stochastic_quantizer_samples_only_when_asked():
    quantizer = LARPVectorQuantizer(num_embeddings=3, embedding_dim=3, temperature=0.03)
    with torch.no_grad():
        quantizer.embedding.copy_(torch.eye(3) * torch.tensor([[2.0], [0.5], [1.0]]))  # normalised: the unit axes
    z = torch.tensor([[1.0, 1.0, 0.0], [0.2, 0.0, 1.0]]).repeat(2000, 1)[None]  # cosines (.71, .71, 0), (.2, 0, .98)
    quantizer.eval()
    # hand-computed: the first row is a tie broken towards the lowest id, the second picks code 2
    assert quantizer(z).indices[0, :2].tolist() == [0, 2]
    sampled = quantizer(z, sample=True, generator=torch.Generator().manual_seed(0)).indices[0]
    first, second = sampled[0::2], sampled[1::2]
    # softmax([.707, .707, 0] / 0.03) = [0.5, 0.5, 6e-11]; softmax([.196, 0, .981] / 0.03) puts 1 - 4e-12 on code 2
    assert set(first.tolist()) == {0, 1} and abs((first == 0).float().mean().item() - 0.5) < 0.05
    assert (second == 2).all()
    again = quantizer(z, sample=True, generator=torch.Generator().manual_seed(0)).indices[0]
    assert torch.equal(sampled, again)
    quantizer.train()
    trained = quantizer(z)
    assert set(trained.indices[0, 0::2].tolist()) == {0, 1} and trained.loss is not None


def _tiny(**overrides):
    config = LARPConfig(**{
        "image_size": 16, "num_frames": 8, "patch_size": 8, "temporal_patch_size": 2, "decoder_patch_size": 8,
        "decoder_temporal_patch_size": 2, "num_latent_tokens": 6, "encoder_hidden_size": 16,
        "encoder_num_hidden_layers": 1, "encoder_num_attention_heads": 2, "decoder_hidden_size": 16,
        "decoder_num_hidden_layers": 1, "decoder_num_attention_heads": 2, "bottleneck_dim": 4, "codebook_size": 32,
        **overrides,
    })
    torch.manual_seed(0)
    return LARPModel(config).eval()


def test_short_clips_and_num_frames():
    model = _tiny()
    clip = torch.rand(2, 8, 3, 16, 16)
    with torch.no_grad():
        tokens = model.encode(clip).tokens
        assert model.decode(tokens).reconstruction.shape == (2, 8, 3, 16, 16)
        for frames in (2, 4, 6):
            short = model.encode(clip[:, :frames])
            assert short.tokens.shape == (2, 6)
            assert model.decode(short.tokens, num_frames=frames).reconstruction.shape == (2, frames, 3, 16, 16)
            assert model(clip[:, :frames]).reconstruction.shape == (2, frames, 3, 16, 16)
        # the patch queries attend to each other: a shorter decode is not a prefix of the full one
        full = model.decode(tokens, num_frames=8).reconstruction
        part = model.decode(tokens, num_frames=4).reconstruction
        assert not torch.allclose(full[:, :4], part)
    for frames in (0, 3, 10):
        with pytest.raises(ValueError, match=rf"multiple of 2 frames between 2 and 8, got {frames} frames"):
            model.decode(tokens, num_frames=frames)
    with pytest.raises(ValueError, match=r"3 channels in dimension 2, got 8"):
        model.encode(clip.transpose(1, 2))


def test_sample_argument_draws_codes_in_eval():
    model = _tiny(stochastic_temperature=10.0)  # a hot softmax: samples differ from the argmax
    clip = torch.rand(1, 8, 3, 16, 16)
    with torch.no_grad():
        argmax = model.encode(clip).tokens
        sampled = model.encode(clip, sample=True, generator=torch.Generator().manual_seed(1)).tokens
        repeated = model.encode(clip, sample=True, generator=torch.Generator().manual_seed(1)).tokens
    assert torch.equal(sampled, repeated) and not torch.equal(sampled, argmax)
    assert torch.equal(model.encode(clip).tokens, argmax)


def test_prior_without_l2_normalisation():
    """GPTC's `l2_normalized: false` (prior `args`) returns the raw head output; the converter reads the flag."""
    prior = dict(prior_hidden_size=16, prior_num_hidden_layers=1, prior_num_attention_heads=1,
                 prior_max_position_embeddings=6, prior_latent_ce_temperature=0.5)
    normalised, raw = _tiny(**prior), _tiny(**prior, prior_l2_normalized=False)
    raw.load_state_dict(normalised.state_dict())
    vectors = torch.randn(2, 6, 4) * 3
    with torch.no_grad():
        expected = raw.prior_predict(vectors)
        torch.testing.assert_close(expected[:, 0], vectors[:, 0])  # position 0 repeats the input, not normalised
        assert not torch.allclose(expected.norm(dim=-1), torch.ones(2, 6))
        torch.testing.assert_close(torch.nn.functional.normalize(expected, dim=-1), normalised.prior_predict(vectors))
        # logits: raw predictions against the l2-normalised codebook, / temperature (written out)
        codebook = torch.nn.functional.normalize(raw.quantizer.embedding, dim=-1)
        torch.testing.assert_close(raw.prior_logits(vectors), expected[:, 1:] @ codebook.T / 0.5)


def test_conversion_reads_the_prior_l2_flag(parity_root, tmp_path):
    with_prior = [c for c in _cases(parity_root)
                  if "prior_model.input_proj.weight" in load_file(c / "original" / "model.safetensors")]
    if not with_prior:
        pytest.skip("no LARP case with prior weights")
    case = with_prior[0]
    config = json.loads((case / "original" / "config.json").read_text())
    config["prior_model"].setdefault("args", {})["l2_normalized"] = False
    (tmp_path / "config.json").write_text(json.dumps(config))
    args = ["--config", str(tmp_path / "config.json")]
    if (case / "presets.json").is_file():
        args += ["--preset-overrides", str(case / "presets.json")]
    assert convert_main(["larp", str(case / "original"), str(tmp_path / "dest"), *args]) == 0
    assert AutoModel.from_pretrained(tmp_path / "dest").config.prior_l2_normalized is False


def test_learned_position_tables_fold_like_the_original(tmp_path):
    """The original's learned per-axis tables are summed in (t, h, w) order, and token-type vectors added, before
    use; the converter folds them into saved tables (written-out index formula)."""
    from vistok.conversion.convert_larp import _position_tables

    grid_t, grid_h, grid_w, dim = 2, 3, 4, 5
    generator = torch.Generator().manual_seed(0)
    state = {
        "encoder_t_embed": torch.randn(1, grid_t, 1, 1, dim, generator=generator),
        "encoder_h_embed": torch.randn(1, 1, grid_h, 1, dim, generator=generator),
        "encode_w_embed": torch.randn(1, 1, 1, grid_w, dim, generator=generator),
        "encoder_patch_token_type_embed": torch.randn(1, 1, dim, generator=generator),
        "decoder_latent_pe": torch.randn(1, 6, dim, generator=generator),
        "decoder_patch_query_embed": torch.randn(1, grid_t * grid_h * grid_w, dim, generator=generator),
    }
    tables, consumed = _position_tables(state)
    table = tables["embeddings.position_embedding"]
    assert table.shape == (grid_t * grid_h * grid_w, dim)
    for t, h, w in ((0, 0, 0), (1, 2, 3), (1, 0, 2)):
        expected = (state["encoder_t_embed"][0, t, 0, 0] + state["encoder_h_embed"][0, 0, h, 0]
                    + state["encode_w_embed"][0, 0, 0, w] + state["encoder_patch_token_type_embed"][0, 0])
        torch.testing.assert_close(table[(t * grid_h + h) * grid_w + w], expected)
    torch.testing.assert_close(tables["decoder_embeddings.latent_position_embedding"], state["decoder_latent_pe"][0])
    assert sorted(consumed) == sorted(state)
    # a model with learned tables saves and reloads them (they are parameters, not recomputed buffers)
    model = _tiny(learned_position_embeddings=True)
    with torch.no_grad():
        model.embeddings.position_embedding.add_(1.0)
    model.save_pretrained(tmp_path)
    reloaded = LARPModel.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.embeddings.position_embedding, model.embeddings.position_embedding)
    assert "embeddings.position_embedding" not in _tiny().state_dict()


def test_num_frames_not_a_multiple_of_the_temporal_patch():
    """frame_num 9 with temporal patches of 2 (the original accepts it): the strided patch convolution never reads
    frame 8, so a 9-frame clip has the codes of its first 8 frames under the same weights with num_frames 8, and the
    decoder predicts 2 * (9 // 2) = 8 frames. Other lengths must be multiples of 2."""
    odd, even = _tiny(num_frames=9), _tiny()
    odd.load_state_dict(even.state_dict())
    clip = torch.rand(2, 9, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        tokens = odd.encode(clip).tokens
        assert torch.equal(tokens, even.encode(clip[:, :8]).tokens)
        reconstruction = odd.decode(tokens, num_frames=9).reconstruction
        assert reconstruction.shape == (2, 8, 3, 16, 16)
        torch.testing.assert_close(reconstruction, even.decode(tokens, num_frames=8).reconstruction)
        assert odd(clip).reconstruction.shape == (2, 8, 3, 16, 16)
    with pytest.raises(ValueError, match=r"9 frames \(the full clip\) or a multiple of 2 frames between 2 and 9, got 7"):
        odd.encode(clip[:, :7])
