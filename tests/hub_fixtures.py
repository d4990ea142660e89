"""Pytest fixtures that point ``huggingface_hub`` / ``transformers`` at a ``FakeHub`` inside the test process.

``huggingface_hub`` reads ``HF_ENDPOINT`` / ``HF_HOME`` / ``HF_HUB_OFFLINE`` / ``HF_TOKEN``-derived paths into
``huggingface_hub.constants`` at import time, and two ``HfApi`` instances capture the endpoint when they are built
(``huggingface_hub.hf_api.api``, behind the module-level ``create_repo`` / ``upload_folder`` / ... functions, and
transformers' cached ``transformers.utils.hub.hf_api()``). ``HubClient.connect`` therefore:

  * sets the environment variables (for anything that reads them at call time and for subprocesses);
  * re-executes the ``constants`` module source in a scratch module with that environment and patches every constant
    that differs, so derived values (cache paths, URL template, token path, offline flag) stay consistent without
    listing them by hand;
  * re-points the two cached ``HfApi`` instances;
  * replaces the shared HTTP session with a fresh one whose request hook refuses any host but the fake hub, so a copy
    of the endpoint that was missed fails loudly instead of reaching huggingface.co.

Everything is undone by ``monkeypatch``. Use in a test module with ``from hub_fixtures import fake_hub, hub_client``.
"""

import importlib.util
import os
from pathlib import Path
from urllib.parse import urlsplit

import huggingface_hub
import pytest
from huggingface_hub import constants, hf_api

from hub_server import FakeHub


HUB_TOKEN = "hf_vistok_fake_token"
# variables that would override what HF_HOME / HF_ENDPOINT imply
_SHADOWING_ENV = (
    "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HUGGINGFACE_ASSETS_CACHE", "HF_TOKEN_PATH",
    "HF_XET_CACHE", "HUGGING_FACE_HUB_TOKEN", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_CO_STAGING", "HF_MODULES_CACHE",
)


class HubClient:
    """Points the in-process Hub client at ``hub`` (see the module docstring); ``connect(offline=True)`` simulates
    ``HF_HUB_OFFLINE=1`` with the same cache."""

    def __init__(self, hub: FakeHub, monkeypatch: pytest.MonkeyPatch, hf_home: Path):
        self.hub = hub
        self.monkeypatch = monkeypatch
        self.hf_home = Path(hf_home)
        self.blocked: list[str] = []

    @property
    def cache_dir(self) -> Path:
        return Path(constants.HF_HUB_CACHE)

    def env(self, offline: bool = False) -> dict[str, str]:
        """Environment for a subprocess that should talk to the fake hub (or stay offline)."""
        env = {k: v for k, v in os.environ.items() if k not in _SHADOWING_ENV}
        return env | {
            "HF_ENDPOINT": self.hub.endpoint,
            "HF_HOME": str(self.hf_home),
            "HF_HUB_OFFLINE": "1" if offline else "0",
            "HF_TOKEN": HUB_TOKEN,
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }

    def connect(self, offline: bool = False) -> None:
        mp = self.monkeypatch
        for name in _SHADOWING_ENV:
            mp.delenv(name, raising=False)
        for name, value in self.env(offline).items():
            if os.environ.get(name) != value:
                mp.setenv(name, value)

        spec = importlib.util.find_spec("huggingface_hub.constants")
        fresh = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fresh)  # not registered in sys.modules: a scratch copy computed from the new env
        for name, value in vars(fresh).items():
            if name.isupper() and not callable(value) and getattr(constants, name, None) != value:
                mp.setattr(constants, name, value)
        if constants.ENDPOINT != self.hub.endpoint or constants.HF_HUB_OFFLINE != offline:
            raise RuntimeError("huggingface_hub.constants did not pick up the fake hub settings")

        mp.setattr(hf_api.api, "endpoint", self.hub.endpoint)
        try:
            import transformers.utils.hub as transformers_hub
        except ImportError:
            transformers_hub = None
        if transformers_hub is not None and hasattr(transformers_hub, "_hf_api"):
            mp.setattr(transformers_hub, "_hf_api", None)  # rebuilt on first use with the patched endpoint
        if transformers_hub is not None and hasattr(transformers_hub, "HF_MODULES_CACHE"):
            mp.setattr(transformers_hub, "HF_MODULES_CACHE", str(self.hf_home / "modules"))

        huggingface_hub.close_session()  # the next session is built with the NO_PROXY set above
        session = huggingface_hub.get_session()
        hooks = dict(session.event_hooks)
        hooks["request"] = [*hooks.get("request", []), self._only_fake_hub]
        session.event_hooks = hooks

    def disconnect(self) -> None:
        huggingface_hub.close_session()  # drop the guarded session; monkeypatch restores the rest
        if self.blocked:
            raise AssertionError(f"requests to hosts other than the fake hub were blocked: {self.blocked}")

    def _only_fake_hub(self, request) -> None:
        expected = urlsplit(self.hub.endpoint)
        if (request.url.host, request.url.port) != (expected.hostname, expected.port):
            self.blocked.append(str(request.url))
            raise RuntimeError(f"test Hub client tried to reach {request.url}; only {self.hub.endpoint} is allowed")


@pytest.fixture(scope="module")
def fake_hub():
    """A running ``FakeHub`` (token-protected writes) shared by the tests of one module."""
    with FakeHub(token=HUB_TOKEN) as hub:
        yield hub


@pytest.fixture
def hub_client(fake_hub, monkeypatch, tmp_path):
    """``HubClient`` connected (online) to ``fake_hub`` with a fresh, per-test ``HF_HOME``."""
    client = HubClient(fake_hub, monkeypatch, tmp_path / "hf_home")
    client.connect(offline=False)
    yield client
    client.disconnect()
