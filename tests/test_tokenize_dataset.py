"""``vistok-tokenize``: parquet shards of tokens/latents per source row; resumable; data-parallel under accelerate.

Expected values come from encoding each image directly (processor -> ``encode``), one image at a time, in the
image folder's file order.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

import vistok  # noqa: F401  (registers the Auto classes)
from hub_fixtures import fake_hub, hub_client  # noqa: F401  (pytest fixtures)
from testers import all_testers
from vistok.tokenize_dataset import main as tokenize_main


TESTERS = {t.name: t for t in all_testers()}
SIZES = [(40, 48), (32, 32), (50, 36), (33, 64), (48, 40), (36, 36), (41, 29)]  # (width, height), mixed


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.RandomState(0)
    for index, (width, height) in enumerate(SIZES):
        image = Image.fromarray(rng.randint(0, 256, (height, width, 3), dtype=np.uint8))
        (image.convert("L") if index == 1 else image).save(folder / f"img_{index}.png")  # a grayscale file too
    return folder


def saved_tester(name: str, folder: Path) -> Path:
    tester = TESTERS[name]
    tester.make_model().save_pretrained(folder)
    tester.make_image_processor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def titok_dir(tmp_path_factory):
    return saved_tester("titok-vq", tmp_path_factory.mktemp("titok"))


def expected_outputs(model_dir: Path, image_dir: Path) -> list[torch.Tensor]:
    model = AutoModel.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    outputs = []
    for name in sorted(p.name for p in image_dir.iterdir()):
        pixel_values = processor(Image.open(image_dir / name).convert("RGB"), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            encoded = model.encode(pixel_values)
        outputs.append(encoded.tokens[0] if encoded.tokens is not None else encoded.latents[0])
    return outputs


def read_shards(out: Path, column: str) -> tuple[list[int], list]:
    import datasets

    dataset = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert dataset.column_names == ["row", column]
    return dataset["row"], dataset[column]


def shard_files(out: Path) -> list[Path]:
    return sorted((out / "data").glob("*.parquet"))


def test_tokens_match_direct_encoding_and_resume(titok_dir, image_dir, tmp_path):
    out = tmp_path / "out"
    args = [str(titok_dir), str(image_dir), str(out), "--shard-size", "3", "--batch-size", "2", "--no-progress"]
    assert tokenize_main(args) == 0
    files = shard_files(out)
    assert [f.name for f in files] == [f"train-{i:05d}-of-00003.parquet" for i in range(3)]
    rows, tokens = read_shards(out, "tokens")
    expected = expected_outputs(titok_dir, image_dir)
    assert rows == list(range(len(SIZES)))
    for got, want in zip(tokens, expected, strict=True):
        assert torch.equal(torch.tensor(got), want.reshape(-1).to(torch.int64))
    metadata = json.loads(pq.read_schema(files[0]).metadata[b"vistok"])
    assert metadata["kind"] == "tokens" and metadata["token_shape"] == list(expected[0].shape)
    info = json.loads((out / "vistok_tokenize.json").read_text())
    assert (info["num_rows"], info["num_shards"], info["split"]) == (len(SIZES), 3, "train")

    # interrupted run: shard 1 missing (and a stale temporary file left by a killed writer)
    kept = {f.name: f.stat().st_mtime_ns for f in files if "00001-of" not in f.name}
    files[1].unlink()
    (out / "data" / ".train-00001-of-00003.parquet.999.tmp").write_bytes(b"partial")
    assert tokenize_main(args) == 0
    assert {f.name: f.stat().st_mtime_ns for f in shard_files(out) if f.name in kept} == kept, "finished shards redone"
    assert not list((out / "data").glob(".*.tmp"))
    assert read_shards(out, "tokens") == (rows, tokens)

    assert tokenize_main([*args[:3], "--shard-size", "2", "--no-progress"]) == 2  # shards of another layout


def test_continuous_tokenizer_writes_latents(image_dir, tmp_path):
    model_dir = saved_tester("maetok", tmp_path / "maetok")
    out = tmp_path / "out"
    assert tokenize_main([str(model_dir), str(image_dir), str(out), "--shard-size", "4", "--no-progress"]) == 0
    rows, latents = read_shards(out, "latents")
    assert rows == list(range(len(SIZES)))
    for got, want in zip(latents, expected_outputs(model_dir, image_dir), strict=True):
        torch.testing.assert_close(torch.tensor(got), want, atol=1e-5, rtol=1e-5)


def tokenize_with_two_processes(args: list[str]) -> None:
    """`accelerate launch` of `vistok-tokenize ARGS` with 2 CPU processes (data-parallel, one thread each)."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vistok.tokenize_dataset", *args,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


def test_two_processes_under_accelerate_equal_one(titok_dir, image_dir, tmp_path):
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    common = ["--shard-size", "2", "--batch-size", "2", "--no-progress"]
    assert tokenize_main([str(titok_dir), str(image_dir), str(single), *common]) == 0
    tokenize_with_two_processes([str(titok_dir), str(image_dir), str(parallel), *common])
    writers = {json.loads(pq.read_schema(f).metadata[b"vistok"])["process_index"] for f in shard_files(parallel)}
    assert writers == {0, 1}, "both processes should have written shards"
    rows, tokens = read_shards(parallel, "tokens")
    assert sorted(rows) == rows == list(range(len(SIZES)))  # no row missing or repeated
    assert (rows, tokens) == read_shards(single, "tokens")


def test_push_to_hub(titok_dir, image_dir, tmp_path, hub_client, monkeypatch):
    import datasets

    out = tmp_path / "out"
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)  # imagefolder's usage ping to S3
    assert tokenize_main([str(titok_dir), str(image_dir), str(out), "--shard-size", "4", "--no-progress",
                          "--push-to-hub", "vistok-tests/tokens"]) == 0
    pushed = hub_client.hub.repo_files("vistok-tests/tokens", repo_type="dataset")
    local = {f"data/{f.name}": f.read_bytes() for f in shard_files(out)} | {
        "vistok_tokenize.json": (out / "vistok_tokenize.json").read_bytes()}
    assert {name: pushed.get(name) for name in local} == local
    assert not hub_client.hub.unhandled
