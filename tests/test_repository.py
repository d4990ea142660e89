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
    vistok.registry.register_all()  # idempotent
    assert AutoModel.from_config(vistok.TiTokConfig.from_variant("titok_s128", encoder_num_hidden_layers=1,
                                                                 decoder_num_hidden_layers=1)).__class__.__name__ == "TiTokModel"


def test_cli_entry_points_are_installed():
    for name in ("vistok-convert", "vistok-eval", "vistok-tokenize"):
        out = subprocess.run([name, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "usage" in out.stdout.lower(), out.stderr
    out = subprocess.run([sys.executable, "-m", "vistok.conversion", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "ARCH" in out.stdout.upper()


def _fresh_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_is_lazy_and_heavy_dependencies_wait_for_use():
    heavy = ("torch", "diffusers", "datasets", "av", "transformers.modeling_utils", "vistok.modeling.modeling_titok")
    check = f"import sys; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    assert _fresh_python(f"import vistok; {check}") == "[]"
    # the Auto classes find a vistok model by its model_type; only FlexTok's use brings in diffusers
    code = (
        "import sys, vistok; from transformers import AutoConfig, AutoModel; "
        "config = AutoConfig.for_model('titok', encoder_num_hidden_layers=1, decoder_num_hidden_layers=1); "
        "print(type(AutoModel.from_config(config)).__name__, 'diffusers' in sys.modules); "
        "vistok.FlexTokConfig(); print('diffusers' in sys.modules); "
        "vistok.FlexTokModel(vistok.FlexTokConfig(encoder_num_hidden_layers=1, decoder_num_hidden_layers=2)); "
        "print('diffusers' in sys.modules)"
    )
    assert _fresh_python(code).split() == ["TiTokModel", "False", "False", "True"]


def test_cli_help_and_usage_errors_import_no_torch():
    """`--help` and argument errors of every command answer from argparse alone (torch takes seconds to import)."""
    heavy = ("torch", "transformers", "datasets")
    for command in ("vistok.cli:eval_main", "vistok.cli:tokenize_main", "vistok.conversion.__main__:main"):
        module, function = command.split(":")
        for argv in (["--help"], ["only-one-argument"]):
            code = (f"import sys; from {module} import {function} as main\n"
                    f"try:\n    main({argv!r})\nexcept SystemExit as stop:\n    print(stop.code, end=' ')\n"
                    f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
            last = out.stdout.strip().splitlines()[-1]  # after the usage text
            assert last.endswith(f"{0 if argv == ['--help'] else 2} []"), (command, argv, out.stdout, out.stderr)


def test_registry_names_are_the_model_types():
    from vistok.registry import PIPELINES, SYSTEMS, exports, resolve

    for system in SYSTEMS:
        config_class = resolve(system.config)
        assert config_class.model_type == system.name
        for path in [*system.models.values(), *system.image_processors.values(), *system.converters.values()]:
            assert resolve(path if ":" in path else f"{path}:convert") is not None
    for name, path in exports().items():
        assert getattr(vistok, name) is resolve(path)
    assert all(resolve(task.pipeline) for task in PIPELINES)
