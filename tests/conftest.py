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


@pytest.fixture(scope="session")
def parity_root() -> Path:
    if not PARITY_ROOT.is_dir():
        pytest.skip(f"parity fixtures not found at {PARITY_ROOT} (set VISTOK_PARITY_DIR); they ship only with CI")
    return PARITY_ROOT

