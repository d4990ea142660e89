"""Packaging contracts: the README's commands are what CI runs, and the package maps into `vistok`."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

import vistok


ROOT = Path(__file__).resolve().parents[1]


def _readme_block(title: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"## {title}\n\n```bash\n(.*?)```", text, re.S)
    assert match, f"README has no `## {title}` bash block"
    return [line for line in match.group(1).splitlines() if line.strip()]


def test_ci_runs_the_readme_commands_verbatim():
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    for title in ("Install", "Test"):
        for command in _readme_block(title):
            assert command in ci_lines, f"{command!r} from the README is not in .ci/run"


def test_package_is_mapped_under_vistok():
    package = Path(vistok.__file__).resolve().parent
    for sub in ("modeling", "processing", "conversion"):
        module = importlib.import_module(f"vistok.{sub}")
        assert Path(module.__file__).resolve().parent == package / sub
    for bare in ("modeling", "processing", "conversion"):
        code = f"import importlib.util, sys; sys.path.remove('') if '' in sys.path else None; print(importlib.util.find_spec({bare!r}))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True)
        assert out.stdout.strip() == "None", f"a bare top-level {bare!r} package is installed"


def test_import_registers_everything_and_is_idempotent():
    from transformers import CONFIG_MAPPING, AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    assert "titok" in CONFIG_MAPPING
    assert "image-tokenization" in PIPELINE_REGISTRY.get_supported_tasks()
    importlib.reload(vistok.modeling)  # registration uses exist_ok=True
    assert AutoModel.from_config(vistok.TiTokConfig.from_variant("titok_s128", encoder_num_hidden_layers=1,
                                                                 decoder_num_hidden_layers=1)).__class__.__name__ == "TiTokModel"


def test_cli_entry_points_are_installed():
    for name in ("vistok-convert", "vistok-eval"):
        out = subprocess.run([name, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "usage" in out.stdout.lower(), out.stderr
    out = subprocess.run([sys.executable, "-m", "vistok.conversion", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "ARCH" in out.stdout.upper()
