"""The conversion framework and ``vistok-convert``'s options: wrapped training checkpoints (EMA wins), strict key
accounting, presets, ``--dtype float16/float32/bfloat16`` (codebooks stay float32), ``--no-verify``, ``--force``."""

import json
import shutil

import pytest
import torch
from conftest import parity_case_dir, parity_cases
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModel

import vistok
from testers import all_testers
from vistok.conversion.__main__ import main as convert_main
from vistok.conversion.utils import (
    ConversionError,
    find_checkpoint_file,
    get_preset,
    load_checkpoint,
    load_config_file,
    load_into_model,
    load_presets,
    rename_state_dict,
    verify_saved_model,
)


def _state(value: float) -> dict[str, torch.Tensor]:
    return {"a.weight": torch.full((2, 3), value), "b.bias": torch.full((3,), value)}


# ------------------------------------------------------------------------------------------- checkpoint loading


@pytest.mark.parametrize("wrappers", [
    ("ema", "model"), ("model", "ema"), ("state_dict", "ema"), ("ema", "state_dict"),
    ("model", "state_dict", "ema"), ("module", "ema"),
])
def test_training_checkpoints_unwrap_to_the_ema_weights(tmp_path, wrappers):
    # the EMA weights are what the releases ship: they win over the raw ones whatever the key order
    checkpoint = {name: _state(7.0 if name == "ema" else float(i)) for i, name in enumerate(wrappers)}
    checkpoint["step"] = torch.tensor(1000)
    torch.save(checkpoint, tmp_path / "train.pt")
    loaded = load_checkpoint(tmp_path / "train.pt")
    assert loaded.keys() == {"a.weight", "b.bias"}
    assert all(torch.equal(v, torch.full_like(v, 7.0)) for v in loaded.values())


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "module"])
def test_single_wrappers_and_plain_checkpoints(tmp_path, wrapper):
    torch.save({wrapper: _state(3.0), "epoch": 2}, tmp_path / "wrapped.ckpt")
    assert torch.equal(load_checkpoint(tmp_path / "wrapped.ckpt")["a.weight"], torch.full((2, 3), 3.0))
    torch.save(_state(4.0), tmp_path / "plain.bin")
    assert torch.equal(load_checkpoint(tmp_path / "plain.bin")["b.bias"], torch.full((3,), 4.0))
    save_file(_state(5.0), tmp_path / "plain.safetensors")
    assert torch.equal(load_checkpoint(tmp_path / "plain.safetensors")["a.weight"], torch.full((2, 3), 5.0))


def test_checkpoint_loading_errors(tmp_path):
    with pytest.raises(ConversionError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": [1, 2]}, tmp_path / "list.pt")
    with pytest.raises(ConversionError, match="does not contain a flat dict of tensors"):
        load_checkpoint(tmp_path / "list.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(ConversionError, match="could not read safetensors file"):
        load_checkpoint(tmp_path / "bad.safetensors")


def test_find_checkpoint_file(tmp_path):
    (tmp_path / "README.md").write_text("x")
    save_file(_state(1.0), tmp_path / "model.safetensors")
    assert find_checkpoint_file(tmp_path) == tmp_path / "model.safetensors"
    assert find_checkpoint_file(tmp_path / "model.safetensors") == tmp_path / "model.safetensors"
    torch.save(_state(1.0), tmp_path / "pytorch_model.bin")
    with pytest.raises(ConversionError, match=r"exactly one checkpoint file .*\['model.safetensors', 'pytorch_model.bin'\]"):
        find_checkpoint_file(tmp_path)
    assert find_checkpoint_file(tmp_path, preferred=("pytorch_model.bin",)) == tmp_path / "pytorch_model.bin"
    with pytest.raises(ConversionError, match="neither a checkpoint file nor a directory"):
        find_checkpoint_file(tmp_path / "nothing")


@pytest.mark.parametrize("name", ["model.safetensors", "w.bin", "ckpt.pt", "ckpt.pth", "last.ckpt"])
def test_every_checkpoint_suffix_is_found(tmp_path, name):
    (tmp_path / "config.yaml").write_text("a: 1\n")
    (tmp_path / name).write_bytes(b"")
    assert find_checkpoint_file(tmp_path) == tmp_path / name


def test_config_files_and_presets(tmp_path):
    (tmp_path / "c.yaml").write_text("model:\n  width: 3\n")
    (tmp_path / "c.json").write_text('{"model": {"width": 4}}')
    (tmp_path / "list.json").write_text("[1, 2]")
    assert load_config_file(tmp_path / "c.yaml") == {"model": {"width": 3}}
    assert load_config_file(tmp_path / "c.json") == {"model": {"width": 4}}
    with pytest.raises(ConversionError, match="does not hold a mapping"):
        load_config_file(tmp_path / "list.json")
    with pytest.raises(ConversionError, match="does not exist"):
        load_config_file(tmp_path / "none.json")
    defaults = {"small": {"hidden_size": 8, "num_hidden_layers": 2}}
    (tmp_path / "over.json").write_text('{"small": {"num_hidden_layers": 3}, "tiny": {"hidden_size": 4}}')
    presets = load_presets(defaults, tmp_path / "over.json")
    assert presets == {"small": {"hidden_size": 8, "num_hidden_layers": 3}, "tiny": {"hidden_size": 4}}
    assert defaults == {"small": {"hidden_size": 8, "num_hidden_layers": 2}}  # the defaults are not modified
    assert load_presets(defaults, None) == defaults
    assert get_preset(presets, "small", ("hidden_size",)) == {"hidden_size": 8, "num_hidden_layers": 3}
    with pytest.raises(ConversionError, match=r"preset 'tiny' lacks \['num_hidden_layers'\]"):
        get_preset(presets, "tiny", ("hidden_size", "num_hidden_layers"))
    with pytest.raises(ConversionError, match=r"unknown preset 'huge'; known presets: \['small', 'tiny'\]"):
        get_preset(presets, "huge")
    (tmp_path / "bad.json").write_text('{"small": 3}')
    with pytest.raises(ConversionError, match="preset 'small' in .* must map to a dict, got 3"):
        load_presets(defaults, tmp_path / "bad.json")


def test_rename_state_dict_first_full_match_wins_and_accounts_for_every_key():
    tensors = {name: torch.tensor(float(i)) for i, name in enumerate(
        ["enc.blocks.0.attn.w", "enc.blocks.12.attn.w", "enc.norm.w", "teacher.w", "enc.blocks.0.attn.wx", "head.w"])}
    rules = [(r"enc\.blocks\.(\d+)\.attn\.w", r"encoder.layers.\1.attention.weight"),
             (r"enc\.(.*)", r"encoder.\1"),
             (r"head\.w", "decoder.head.weight")]
    renamed, unmapped, dropped = rename_state_dict(tensors, rules, dropped=[r"teacher\..*"])
    assert renamed.keys() == {"encoder.layers.0.attention.weight", "encoder.layers.12.attention.weight",
                              "encoder.norm.w", "encoder.blocks.0.attn.wx", "decoder.head.weight"}
    assert renamed["encoder.layers.12.attention.weight"] is tensors["enc.blocks.12.attn.w"]
    assert unmapped == [] and dropped == ["teacher.w"]
    # no partial matches: "xhead.w" is neither renamed nor silently dropped
    _, unmapped, _ = rename_state_dict({"xhead.w": torch.zeros(1)}, rules)
    assert unmapped == ["xhead.w"]
    with pytest.raises(ConversionError, match="two source keys map to 'x'"):
        rename_state_dict({"a": torch.zeros(1), "b": torch.zeros(1)}, [(r"[ab]", "x")])


def test_load_into_model_is_strict_and_names_the_keys():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3))
    good = {"0.weight": torch.arange(6.0).view(3, 2), "0.bias": torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)}
    load_into_model(model, good)
    assert torch.equal(model[0].weight, torch.arange(6.0).view(3, 2))
    assert model[0].bias.dtype == torch.float32 and torch.equal(model[0].bias, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ConversionError, match=r"model tensors missing from the checkpoint: \['0.bias'\]"):
        load_into_model(model, {"0.weight": good["0.weight"]})
    with pytest.raises(ConversionError, match=r"converted tensors the model does not have: \['1.weight'\]"):
        load_into_model(model, good | {"1.weight": torch.zeros(1)})
    with pytest.raises(ConversionError) as error:
        load_into_model(model, good | {"0.bias": torch.zeros(4)})
    assert str(error.value) == "checkpoint does not match the model:\n  shape mismatches: ['0.bias: checkpoint (4,) vs model (3,)']"
    with pytest.raises(ConversionError, match=r"source tensors with no mapping: \['old.key'\]"):
        load_into_model(model, good, unmapped=["old.key"])
    # nothing was copied by the failed attempts
    assert torch.equal(model[0].bias, torch.tensor([1.0, 2.0, 3.0]))


# ---------------------------------------------------------------------------------------- vistok-convert options


def _titok_case(parity_root, want_pixel_decoder: bool):
    for case in parity_cases("titok"):
        case_dir = parity_case_dir(parity_root, "titok", case)
        io = load_file(case_dir / "io.safetensors")
        if "codes" in io and "text_guidance" not in io and ("proxy_logits" in io) == want_pixel_decoder:
            return case_dir, io
    pytest.fail(f"no VQ TiTok parity case {'with' if want_pixel_decoder else 'without'} the pixel decoder")


def _convert_args(case_dir, source, dest, *extra):
    args = ["titok", str(source), str(dest), *map(str, extra)]
    if (case_dir / "presets.json").is_file():
        args += ["--preset-overrides", str(case_dir / "presets.json")]
    return args


def _stored_dtypes(path) -> dict[str, str]:
    with safe_open(str(path / "model.safetensors"), "pt") as handle:
        return {key: handle.get_slice(key).get_dtype() for key in handle.keys()}


@pytest.mark.parametrize("dtype, code", [("float16", "F16"), ("bfloat16", "BF16"), ("float32", "F32")])
def test_convert_dtype_keeps_both_codebooks_in_float32(parity_root, tmp_path, dtype, code):
    case_dir, io = _titok_case(parity_root, want_pixel_decoder=True)
    dest = tmp_path / dtype
    assert convert_main(_convert_args(case_dir, case_dir / "original", dest, "--dtype", dtype)) == 0
    stored = _stored_dtypes(dest)
    # named here, not read from the model: the VQ codebook and the MaskGIT-VQGAN pixel codebook stay float32
    codebooks = {k for k in stored if k.startswith(("quantizer.", "pixel_codebook."))}
    assert {"quantizer.embedding", "pixel_codebook.embedding"} <= codebooks
    assert {stored[k] for k in codebooks} == {"F32"}
    others = {stored[k] for k in stored if k not in codebooks}
    assert others == {code}, others
    assert json.loads((dest / "config.json").read_text())["dtype"] == dtype
    model, info = AutoModel.from_pretrained(dest, dtype=getattr(torch, dtype), output_loading_info=True)
    assert not any(info.values()), info
    assert model.pixel_codebook.embedding.dtype == torch.float32 and model.quantizer.embedding.dtype == torch.float32
    assert model.encoder.layers[0].self_attn.q_proj.weight.dtype == getattr(torch, dtype)
    # the codebooks are bit-identical to the float32 release
    original = load_file(case_dir / "original" / "model.safetensors")
    source_codebooks = [v for k, v in original.items() if v.ndim == 2 and v.shape == model.pixel_codebook.embedding.shape]
    assert any(torch.equal(v, model.pixel_codebook.embedding) for v in source_codebooks)
    with torch.no_grad():
        pixel_values = io["pixel_values"].to(getattr(torch, dtype))
        reconstruction = model.eval().decode(model.encode(pixel_values).tokens).reconstruction.float()
    if dtype == "float32":
        torch.testing.assert_close(reconstruction, io["reconstruction"], atol=1e-4, rtol=1e-4)
    else:
        error = (reconstruction - io["reconstruction"]).norm() / io["reconstruction"].norm()
        assert error < 0.1, error


def test_half_precision_load_keeps_named_modules_in_float32(tmp_path):
    """Without fixtures: `from_pretrained(dtype=...)` keeps the modules named here in float32."""
    expected = {"titok-legacy-vq": ["quantizer", "pixel_codebook"], "flextok": ["vae"]}
    for tester in all_testers():
        if tester.name not in expected:
            continue
        tester.make_model().save_pretrained(tmp_path / tester.name)
        for dtype in (torch.float16, torch.bfloat16):
            model = AutoModel.from_pretrained(tmp_path / tester.name, dtype=dtype)
            for name in expected[tester.name]:
                params = list(getattr(model, name).parameters())
                assert params and all(p.dtype == torch.float32 for p in params), (tester.name, name, dtype)
            assert any(p.dtype == dtype for p in model.parameters())


def test_convert_a_wrapped_training_checkpoint_takes_the_ema_weights(parity_root, tmp_path):
    case_dir, io = _titok_case(parity_root, want_pixel_decoder=False)
    if not (case_dir / "original" / "config.yaml").is_file():
        pytest.skip("case ships no inference yaml for the single-file layout")
    ema = load_file(case_dir / "original" / "model.safetensors")
    raw = {k: v + 0.5 if v.is_floating_point() else v for k, v in ema.items()}
    torch.save({"model": raw, "ema": ema, "state_dict": raw, "optimizer": {"lr": torch.tensor(1.0)}},
               tmp_path / "train.ckpt")
    args = _convert_args(case_dir, tmp_path / "train.ckpt", tmp_path / "out", "--config", case_dir / "original" / "config.yaml")
    assert convert_main(args) == 0
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        encoded = model.encode(io["pixel_values"])
    assert torch.equal(encoded.tokens, io["codes"].squeeze(1))
    torch.testing.assert_close(model.decode(encoded.tokens).reconstruction, io["reconstruction"], atol=1e-4, rtol=1e-4)


def test_no_verify_skips_the_reload_and_verify_reloads(parity_root, tmp_path, monkeypatch):
    case_dir, _ = _titok_case(parity_root, want_pixel_decoder=False)
    calls = []
    original = vistok.TiTokModel.from_pretrained.__func__

    def recording(cls, *args, **kwargs):
        calls.append(str(args[0]))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(vistok.TiTokModel, "from_pretrained", classmethod(recording))
    assert convert_main(_convert_args(case_dir, case_dir / "original", tmp_path / "a", "--no-verify")) == 0
    assert calls == []
    assert convert_main(_convert_args(case_dir, case_dir / "original", tmp_path / "b")) == 0
    # the reload happens once, on the staging folder next to DEST that then becomes DEST
    assert len(calls) == 1 and calls[0].startswith(str(tmp_path / ".b.partial-"))
    # both directories hold the same converted model
    monkeypatch.undo()
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_force_overwrites_a_previous_conversion_without_stale_weights(parity_root, tmp_path, capsys):
    vq_case, _ = _titok_case(parity_root, want_pixel_decoder=False)
    legacy_case, _ = _titok_case(parity_root, want_pixel_decoder=True)
    fresh = tmp_path / "fresh"
    assert convert_main(_convert_args(vq_case, vq_case / "original", fresh)) == 0
    dest = tmp_path / "dest"
    assert convert_main(_convert_args(legacy_case, legacy_case / "original", dest)) == 0
    # an older, sharded save of another model in DEST
    tester = next(t for t in all_testers() if t.name == "titok-vae")
    tester.make_model().save_pretrained(dest, max_shard_size="20KB")
    assert (dest / "model.safetensors.index.json").is_file()
    (dest / "notes.txt").write_text("mine")
    before = sorted(p.name for p in dest.iterdir())

    assert convert_main(_convert_args(vq_case, vq_case / "original", dest)) == 2
    assert "--force" in capsys.readouterr().err
    assert sorted(p.name for p in dest.iterdir()) == before  # refused: nothing touched
    assert convert_main(_convert_args(vq_case, vq_case / "original", dest, "--force")) == 0

    # what --force leaves: exactly a fresh conversion (DEST is replaced as a whole once the new one is verified), no
    # stale weight shards or index, nothing of the earlier content
    names = {p.name for p in dest.iterdir()}
    assert names == {p.name for p in fresh.iterdir()}, names
    for name in ("config.json", "preprocessor_config.json"):
        assert json.loads((dest / name).read_text()) == json.loads((fresh / name).read_text())
    new, reference = load_file(dest / "model.safetensors"), load_file(fresh / "model.safetensors")
    assert new.keys() == reference.keys() and all(torch.equal(new[k], reference[k]) for k in new)
    model, info = AutoModel.from_pretrained(dest, output_loading_info=True)
    assert not any(info.values()) and model.config.use_pixel_decoder is False


@pytest.mark.parametrize("problem", ["unexpected", "missing"])
def test_verification_rejects_a_written_model_that_does_not_reload_cleanly(tmp_path, problem):
    tester = next(t for t in all_testers() if t.name == "titok-vq")
    tester.make_model().save_pretrained(tmp_path)
    verify_saved_model(tmp_path, tester.model_class)
    weights = load_file(tmp_path / "model.safetensors")
    if problem == "unexpected":
        weights["decoder.extra.weight"] = torch.zeros(2)
    else:
        del weights["decoder.post_layernorm.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=rf"does not reload cleanly: .*{problem}_keys"):
        verify_saved_model(tmp_path, tester.model_class)


def test_convert_refuses_a_file_as_destination_and_unknown_dtype(parity_root, tmp_path, capsys):
    case_dir, _ = _titok_case(parity_root, want_pixel_decoder=False)
    (tmp_path / "file").write_text("x")
    assert convert_main(_convert_args(case_dir, case_dir / "original", tmp_path / "file")) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert_main(_convert_args(case_dir, case_dir / "original", tmp_path / "x", "--dtype", "float8"))
    shutil.rmtree(tmp_path / "x", ignore_errors=True)
