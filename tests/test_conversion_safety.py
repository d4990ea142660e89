"""vistok-convert never loses data and answers mistakes with a message that names the problem."""

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from vistok.conversion.__main__ import main as convert_main


def _tree_digest(folder) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def titok_source(parity_root, tmp_path):
    """A copy of a TiTok release folder (a parity case's `original/`) and its presets file."""
    cases = sorted(p for p in (parity_root / "titok").iterdir() if (p / "original").is_dir())
    case = next(c for c in cases if (c / "original" / "config.json").is_file())
    source = tmp_path / "release"
    shutil.copytree(case / "original", source)
    return source, case / "presets.json"


def _convert(capsys, *args) -> tuple[int, str]:
    code = convert_main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_dest_overlapping_source_is_refused_and_source_untouched(titok_source, capsys):
    source, presets = titok_source
    before = _tree_digest(source)
    for dest in (source, source / "converted", source.parent):
        code, err = _convert(capsys, "titok", source, dest, "--preset-overrides", presets, "--force")
        assert code == 2 and "overlap" in err and "destroy the original checkpoint" in err, err
    assert _tree_digest(source) == before


def test_failed_conversion_leaves_dest_as_it_was(titok_source, tmp_path, capsys):
    source, presets = titok_source
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("previous result")
    (source / "config.json").write_text("{ not json")
    code, err = _convert(capsys, "titok", source, dest, "--preset-overrides", presets, "--force")
    assert code == 2
    assert f"config file {source / 'config.json'} is not valid JSON" in err
    assert _tree_digest(dest) == {"keep.txt": hashlib.sha256(b"previous result").hexdigest()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "release"]  # no staging folder left behind
    (source / "config.json").write_text("")
    assert "is empty" in _convert(capsys, "titok", source, dest, "--preset-overrides", presets, "--force")[1]


def test_written_files_are_readable_and_the_card_says_import_vistok(titok_source, tmp_path, capsys):
    source, presets = titok_source
    dest = tmp_path / "dest"
    old_umask = os.umask(0o022)
    try:
        assert _convert(capsys, "titok", source, dest, "--preset-overrides", presets)[0] == 0
    finally:
        os.umask(old_umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in dest.iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    card = (dest / "README.md").read_text()
    assert "import vistok" in card and "vistok-convert titok" in card


def test_mismatched_tensor_is_named_by_its_source_name(titok_source, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    source, presets = titok_source
    state = load_file(source / "model.safetensors")
    key = "encoder.transformer.0.mlp.c_proj.weight"
    state[key] = state[key][:, :-1].contiguous()
    save_file(state, source / "model.safetensors")
    code, err = _convert(capsys, "titok", source, tmp_path / "dest", "--preset-overrides", presets)
    assert code == 2
    assert f"(source tensor {key!r})" in err, err


def test_wrong_arch_names_the_architecture_it_looks_like(titok_source, tmp_path, capsys):
    source, presets = titok_source
    code, err = _convert(capsys, "maetok", source, tmp_path / "dest", "--preset-overrides", presets)
    assert code == 2 and "SOURCE looks like a titok checkpoint, not maetok" in err, err


def test_config_disagreeing_with_weights_is_reported(titok_source, tmp_path, caplog):
    source, presets = titok_source
    config = json.loads((source / "config.json").read_text())
    declared = config["model"]["vq_model"]["num_latent_tokens"] + 1
    config["model"]["vq_model"]["num_latent_tokens"] = declared
    (source / "config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING", logger="vistok.conversion"):
        assert convert_main(["titok", str(source), str(tmp_path / "dest"), "--preset-overrides", str(presets)]) == 0
    assert f"the original config says num_latent_tokens={declared} but the weights have {declared - 1}" in caplog.text


def test_arch_help_lists_layouts():
    out = subprocess.run([sys.executable, "-m", "vistok.conversion", "titok", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "Accepted SOURCE layouts" in out and "--preset-overrides" in out
    out = " ".join(subprocess.run(["vistok-eval", "--help"], capture_output=True, text=True, check=True).stdout.split())
    assert "(default: vistok-eval)" in out and "(default: 16)" in out and "(default: float32)" in out
