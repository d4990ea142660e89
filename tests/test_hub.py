"""Hub push/pull for every tiny tokenizer, against the local ``FakeHub`` (no network).

* ``push_to_hub`` (model + image processor) -> ``Auto*.from_pretrained(repo_id)`` gives identical outputs;
* ``snapshot_download`` -> files byte-identical to a local ``save_pretrained`` -> ``HF_HUB_OFFLINE=1`` reload from the
  cache, with no request reaching the server;
* ``vistok-convert ... --push-to-hub`` (a real subprocess configured only through ``HF_ENDPOINT`` & co.) publishes a
  converted TiTok parity case that reloads from the Hub with the fixture's outputs.
"""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import snapshot_download
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel

import vistok  # noqa: F401  (registers the Auto classes)
from hub_fixtures import fake_hub, hub_client  # noqa: F401  (pytest fixtures)
from testers import all_testers


TESTERS = all_testers()
IDS = [t.name for t in TESTERS]
# files the Hub adds next to what save_pretrained writes: the initial commit and push_to_hub's model card
HUB_ONLY_FILES = {".gitattributes", "README.md"}


def run_tokenizer(model, tester, pixel_values) -> dict[str, torch.Tensor]:
    """Every tensor ``encode`` returns plus the reconstruction decoded from its tokens (or latents)."""
    with torch.no_grad():
        encoded = model.encode(pixel_values)
        source = encoded.tokens if encoded.tokens is not None else encoded.latents
        decoded = model.decode(source, **tester.make_decode_kwargs(pixel_values.shape[0]))
    outputs = {key: value for key, value in encoded.items() if isinstance(value, torch.Tensor)}
    outputs["reconstruction"] = decoded.reconstruction
    return outputs


def assert_identical(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        got = actual[key]
        assert (got.dtype, got.shape) == (value.dtype, value.shape), f"{key}: {got.dtype} {tuple(got.shape)}"
        if not torch.equal(got, value):
            max_diff = (got.double() - value.double()).abs().max().item()
            pytest.fail(f"{key} differs after the Hub round trip (max abs diff {max_diff:.3g})")


def assert_loads_cleanly(repo_or_path, **kwargs):
    model, info = AutoModel.from_pretrained(repo_or_path, output_loading_info=True, **kwargs)
    assert all(not value for value in info.values()), info
    return model.eval()


def sha256_tree(root: Path) -> dict[str, str]:
    """relative posix path -> sha256 of every file below ``root`` (symlinks followed, as in a Hub cache)."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def assert_same_processor(loaded, original) -> None:
    assert type(loaded) is type(original)
    assert loaded.to_dict() == original.to_dict()


@pytest.mark.parametrize("tester", TESTERS, ids=IDS)
def test_push_to_hub_then_from_pretrained(tester, hub_client):
    hub = hub_client.hub
    repo_id = f"vistok-tests/{tester.name}-push"
    model, processor = tester.make_model(), tester.make_processor()
    pixel_values = tester.make_pixel_values()
    expected = run_tokenizer(model, tester, pixel_values)

    commits_before = hub.count("POST", f"/api/models/{repo_id}/commit/")
    model.push_to_hub(repo_id)
    processor.push_to_hub(repo_id)  # second create_repo answers 409 + url
    assert hub.count("POST", f"/api/models/{repo_id}/commit/") - commits_before == 2
    pushed = hub.repo_files(repo_id)
    assert {"config.json", "model.safetensors", tester.processor_config_file, "README.md"} <= pushed.keys()

    downloads_before = hub.count("GET", f"/{repo_id}/resolve/")
    reloaded = assert_loads_cleanly(repo_id)
    assert type(reloaded) is type(model)
    assert hub.count("GET", f"/{repo_id}/resolve/") > downloads_before, "from_pretrained did not download"
    assert_identical(run_tokenizer(reloaded, tester, pixel_values), expected)
    assert_same_processor(tester.auto_processor_class.from_pretrained(repo_id), processor)
    assert not hub.unhandled


@pytest.mark.parametrize("tester", TESTERS, ids=IDS)
def test_snapshot_download_then_offline_reload(tester, hub_client, tmp_path):
    hub = hub_client.hub
    repo_id = f"vistok-tests/{tester.name}-snapshot"
    model, processor = tester.make_model(seed=1), tester.make_processor()
    pixel_values = tester.make_pixel_values(seed=1)
    expected = run_tokenizer(model, tester, pixel_values)
    local = tmp_path / "local"
    model.save_pretrained(local)
    processor.save_pretrained(local)
    model.push_to_hub(repo_id)
    processor.push_to_hub(repo_id)

    snapshot = Path(snapshot_download(repo_id))
    assert snapshot.is_relative_to(hub_client.cache_dir)
    assert snapshot.name == hub.head_commit(repo_id)
    local_hashes, snapshot_hashes = sha256_tree(local), sha256_tree(snapshot)
    assert snapshot_hashes.keys() - local_hashes.keys() <= HUB_ONLY_FILES
    assert {name: snapshot_hashes.get(name) for name in local_hashes} == local_hashes  # byte-identical
    server_files = hub.repo_files(repo_id)
    assert {name: hashlib.sha256(data).hexdigest() for name, data in server_files.items()} == snapshot_hashes

    hub_client.connect(offline=True)
    requests_before = len(hub.requests)
    assert Path(snapshot_download(repo_id)) == snapshot
    reloaded = assert_loads_cleanly(repo_id)
    assert_identical(run_tokenizer(reloaded, tester, pixel_values), expected)
    assert_same_processor(tester.auto_processor_class.from_pretrained(repo_id), processor)
    assert len(hub.requests) == requests_before, f"offline reload reached the server: {hub.requests[requests_before:]}"
    assert not hub.unhandled


def test_vistok_convert_push_to_hub(parity_root, hub_client, tmp_path):
    case = parity_root / "titok" / "vq_direct"
    if not (case / "original").is_dir():
        pytest.skip(f"parity case {case} not found")
    pytest.importorskip("vistok.conversion.convert_titok")
    hub = hub_client.hub
    repo_id = "vistok-tests/titok-vq-direct-converted"
    dest = tmp_path / "converted"
    # a fresh interpreter configured only through the documented environment variables, like a user's shell
    command = [
        sys.executable, "-m", "vistok.conversion", "titok", str(case / "original"), str(dest),
        "--preset-overrides", str(case / "presets.json"), "--push-to-hub", repo_id,
    ]
    result = subprocess.run(command, env=hub_client.env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]

    assert hub.count("POST", f"/api/models/{repo_id}/commit/") >= 2
    pushed = {name: hashlib.sha256(data).hexdigest() for name, data in hub.repo_files(repo_id).items()}
    written = sha256_tree(dest)
    assert pushed.keys() - written.keys() <= HUB_ONLY_FILES
    assert {name: pushed.get(name) for name in written} == written

    model = assert_loads_cleanly(repo_id)
    local = assert_loads_cleanly(dest)
    io = load_file(case / "io.safetensors")
    with torch.no_grad():
        encoded = model.encode(io["pixel_values"])
        reconstruction = model.decode(encoded.tokens).reconstruction
        local_encoded = local.encode(io["pixel_values"])
    assert torch.equal(encoded.tokens, io["codes"].reshape(encoded.tokens.shape))
    assert torch.equal(encoded.tokens, local_encoded.tokens)
    torch.testing.assert_close(reconstruction, io["reconstruction"], atol=1e-4, rtol=1e-4)
    assert_same_processor(AutoImageProcessor.from_pretrained(repo_id), AutoImageProcessor.from_pretrained(dest))
    assert not hub.unhandled


def test_fake_hub_speaks_the_hub_protocol(hub_client, tmp_path):
    """The server answers the way huggingface_hub expects (errors typed by ``X-Error-Code``, auth, no LFS)."""
    from huggingface_hub import HfApi, get_session, hf_hub_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    hub, api = hub_client.hub, HfApi()
    with pytest.raises(HfHubHTTPError, match="401"):
        api.create_repo("vistok-tests/protocol", token="hf_wrong_token")
    url = api.create_repo("vistok-tests/protocol")
    assert url == f"{hub.endpoint}/vistok-tests/protocol"
    assert api.create_repo("vistok-tests/protocol", exist_ok=True) == url
    (tmp_path / "folder" / "sub").mkdir(parents=True)
    (tmp_path / "folder" / "a.json").write_text('{"a": 1}')
    (tmp_path / "folder" / "sub" / "b.bin").write_bytes(bytes(range(256)) * 3)
    api.upload_folder(repo_id="vistok-tests/protocol", folder_path=tmp_path / "folder")
    assert api.list_repo_files("vistok-tests/protocol") == [".gitattributes", "a.json", "sub/b.bin"]
    head = api.model_info("vistok-tests/protocol").sha
    api.delete_file("a.json", repo_id="vistok-tests/protocol")
    assert api.list_repo_files("vistok-tests/protocol") == [".gitattributes", "sub/b.bin"]
    assert Path(hf_hub_download("vistok-tests/protocol", "a.json", revision=head)).read_text() == '{"a": 1}'

    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("vistok-tests/protocol", "missing.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("vistok-tests/protocol", "sub/b.bin", revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("vistok-tests/no-such-repo")

    session = get_session()
    ranged = session.get(f"{url}/resolve/main/sub/b.bin", headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206 and ranged.content == bytes(range(10, 20))
    lfs_commit = b'{"key": "header", "value": {"summary": "x"}}\n{"key": "lfsFile", "value": {"path": "w.bin"}}\n'
    refused = session.post(
        f"{hub.endpoint}/api/models/vistok-tests/protocol/commit/main",
        content=lfs_commit, headers={"Authorization": f"Bearer {hub.token}"},
    )
    assert refused.status_code == 400 and "lfsFile" in refused.text
    assert session.get(f"{hub.endpoint}/api/agent-harnesses").json() == {"standardEnvVars": [], "harnesses": {}}
    assert not hub.unhandled
