import os
import sys
from pathlib import Path

import pytest


sys.path.insert(0, str(Path(__file__).parent))

PARITY_ROOT = Path(os.environ.get("VISTOK_PARITY_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "parity"))


@pytest.fixture(scope="session")
def parity_root() -> Path:
    if not PARITY_ROOT.is_dir():
        pytest.skip(f"parity fixtures not found at {PARITY_ROOT} (set VISTOK_PARITY_DIR); they ship only with CI")
    return PARITY_ROOT


@pytest.fixture(autouse=True)
def _isolated_hf_home(tmp_path_factory, monkeypatch):
    # never touch the user's Hub cache; nothing is downloaded in tests
    home = tmp_path_factory.getbasetemp() / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "1"))
