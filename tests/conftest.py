import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path


# Set before anything imports huggingface_hub (it reads these at import time): tests never touch the user's cache and
# never reach the network; the Hub tests point the client at their own local server explicitly.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="vistok-tests-hf-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402


sys.path.insert(0, str(Path(__file__).parent))

PARITY_ROOT = Path(os.environ.get("VISTOK_PARITY_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "parity"))
# CI (`.ci/run`) sets VISTOK_REQUIRE_PARITY=1: there a missing or empty fixture folder fails the run instead of skipping
REQUIRE_PARITY = os.environ.get("VISTOK_REQUIRE_PARITY", "0") not in ("", "0")
NO_CASES = "<no parity cases>"


def missing_fixture(message: str):
    """Skips the calling test, or fails it when VISTOK_REQUIRE_PARITY is set."""
    if REQUIRE_PARITY:
        pytest.fail(f"{message} (VISTOK_REQUIRE_PARITY=1: parity fixtures are required)", pytrace=False)
    pytest.skip(message)


def parity_cases(arch: str) -> list[str]:
    """Every case folder under ``PARITY_ROOT/<arch>/`` (sorted), for ``pytest.mark.parametrize``; never a hard-coded
    list. With no folder, a single placeholder that ``parity_case_dir`` turns into a skip (or a failure in CI)."""
    folder = PARITY_ROOT / arch
    cases = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return cases or [NO_CASES]


@pytest.fixture(scope="session")
def parity_root() -> Path:
    if not PARITY_ROOT.is_dir():
        missing_fixture(f"parity fixtures not found at {PARITY_ROOT} (set VISTOK_PARITY_DIR); they ship only with CI")
    return PARITY_ROOT


def parity_case_dir(parity_root: Path, arch: str, case: str) -> Path:
    """``parity_root/arch/case`` after checking that it holds ``original/`` and ``io.safetensors``."""
    if case == NO_CASES:
        missing_fixture(f"no {arch} parity cases under {parity_root / arch}")
    case_dir = parity_root / arch / case
    for required in ("original", "io.safetensors"):
        if not (case_dir / required).exists():
            pytest.fail(f"parity case {case_dir} lacks {required}", pytrace=False)
    return case_dir
