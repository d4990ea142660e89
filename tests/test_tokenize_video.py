"""Video datasets in ``vistok-tokenize`` and ``vistok-eval``: a folder of mp4 files (``videofolder``), decoded with
PyAV through the model's video processor, tokenized by tiny random LARP (1D tokens) and Emu3 (grid tokens) models.

Expected values come from the processor and the model called directly on each file, one clip at a time.
"""

import json
import os
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModel, AutoVideoProcessor

import vistok  # noqa: F401  (registers the Auto classes)
from test_tokenize_dataset import tokenize_with_two_processes
from testers import all_testers
from vistok.evaluation import main as eval_main
from vistok.tokenize_dataset import main as tokenize_main


TESTERS = {t.name: t for t in all_testers()}
# (frames, width, height): odd frame counts, non-square and odd frame sizes (written in yuv444p)
CLIPS = [(9, 40, 30), (11, 37, 29), (13, 30, 44)]


def write_clip(path: Path, frames: int, width: int, height: int, seed: int) -> None:
    rng = np.random.RandomState(seed)
    ramp = np.linspace(0, 200, width, dtype=np.float32)[None, :, None]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(8))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        for index in range(frames):
            pixels = ramp + 4 * index + rng.randint(0, 40, (height, width, 3))
            frame = av.VideoFrame.from_ndarray(np.clip(pixels, 0, 255).astype(np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    for index, (frames, width, height) in enumerate(CLIPS):
        write_clip(folder / f"clip_{index}.mp4", frames, width, height, seed=index)
    return folder


def saved_tester(name: str, folder: Path) -> Path:
    TESTERS[name].make_model().save_pretrained(folder)
    TESTERS[name].make_processor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["larp", "emu3-video"])
def model_dir(request, tmp_path_factory):
    return saved_tester(request.param, tmp_path_factory.mktemp(request.param))


def direct(model_dir: Path, video_dir: Path):
    """Per clip, in file order: (pixel values [T, 3, H, W], tokens, reconstruction in the model range)."""
    model = AutoModel.from_pretrained(model_dir).eval()
    processor = AutoVideoProcessor.from_pretrained(model_dir)
    outputs = []
    for name in sorted(os.listdir(video_dir)):
        pixel_values = processor(videos=[str(video_dir / name)], return_tensors="pt")["pixel_values_videos"]
        with torch.no_grad():
            tokens = model.encode(pixel_values).tokens
            kwargs = {"num_frames": pixel_values.shape[1]} if getattr(model, "decode_takes_num_frames", False) else {}
            reconstruction = model.decode(tokens, **kwargs).reconstruction
        outputs.append((pixel_values[0], tokens[0], reconstruction[0]))
    return model, processor, outputs


def read_tokens(out: Path):
    import datasets

    dataset = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    return dataset["row"], dataset["tokens"]


def test_tokenize_video_folder_and_resume(model_dir, video_dir, tmp_path):
    out = tmp_path / "out"
    args = [str(model_dir), str(video_dir), str(out), "--batch-size", "2", "--shard-size", "2", "--no-progress"]
    assert tokenize_main(args) == 0
    _, _, expected = direct(model_dir, video_dir)
    rows, tokens = read_tokens(out)
    assert rows == [0, 1, 2]
    for got, (_, want, _) in zip(tokens, expected, strict=True):
        assert got == want.reshape(-1).tolist()
    first_shard = sorted((out / "data").glob("*.parquet"))[0]
    metadata = json.loads(pq.read_schema(first_shard).metadata[b"vistok"])
    if expected[0][1].ndim == 3:  # Emu3's [t, h, w] grid follows each clip's size: one shape per row
        assert metadata["token_layout"] == "grid" and metadata["token_shape"] is None
        assert pq.read_table(first_shard)["token_shape"].to_pylist() == [list(e[1].shape) for e in expected[:2]]
    else:
        assert metadata["token_layout"] == "1d" and metadata["token_shape"] == list(expected[0][1].shape)
    first = out / "data" / "train-00000-of-00002.parquet"
    kept = first.stat().st_mtime_ns
    (out / "data" / "train-00001-of-00002.parquet").unlink()
    assert tokenize_main(args) == 0
    assert first.stat().st_mtime_ns == kept and read_tokens(out) == (rows, tokens)


def test_two_processes_under_accelerate_equal_one(video_dir, tmp_path):
    """LARP only: the data path is the same for Emu3, and two more processes cost ~30 s of CPU."""
    model_dir = saved_tester("larp", tmp_path / "larp")
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    common = ["--shard-size", "1", "--batch-size", "1", "--num-workers", "0", "--no-progress"]
    assert tokenize_main([str(model_dir), str(video_dir), str(single), *common]) == 0
    tokenize_with_two_processes([str(model_dir), str(video_dir), str(parallel), *common])
    writers = {json.loads(pq.read_schema(f).metadata[b"vistok"])["process_index"]
               for f in (parallel / "data").glob("*.parquet")}
    assert writers == {0, 1}, "both processes should have written shards"
    assert read_tokens(parallel) == read_tokens(single)


def test_eval_video_folder_saves_tokens_and_mp4s(model_dir, video_dir, tmp_path):
    out = tmp_path / "eval"
    assert eval_main([str(model_dir), str(video_dir), "--output-dir", str(out), "--save-tokens",
                      "--save-reconstructions", "--batch-size", "3", "--no-progress"]) == 0
    _, processor, expected = direct(model_dir, video_dir)
    report = json.loads((out / "report.json").read_text())
    assert report["num_images"] == 3 and report["num_frames"] == expected[0][0].shape[0]
    _, tokens = read_tokens(out / "tokens")
    for item, got, (pixel_values, want, reconstruction) in zip(report["images"], tokens, expected, strict=True):
        assert got == want.reshape(-1).tolist()
        original = processor.postprocess(pixel_values[None], output_type="pt")[0].double()
        decoded = processor.postprocess(reconstruction[None], output_type="pt")[0].double()
        mse = ((original - decoded) ** 2).mean().item()  # over every frame, channel and pixel of the clip
        assert item["psnr"] == pytest.approx(10 * np.log10(1 / mse), rel=1e-6)
        assert item["reconstruction"] == f"reconstructions/{Path(item['file']).stem}.mp4"
        with av.open(str(out / item["reconstruction"])) as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        want_frames = (decoded.permute(0, 2, 3, 1) * 255).round().numpy()
        assert frames.shape == want_frames.shape  # [T, H, W, 3]
        assert np.abs(frames - want_frames).mean() < 12, "the mp4 holds the reconstruction (up to H.264 loss)"


def test_video_cells_with_bytes_only(model_dir, video_dir, tmp_path):
    """A dataset whose Video cells hold only bytes (a parquet dataset with embedded videos) tokenizes the same."""
    import datasets

    from vistok.tokenize_dataset import load_tokenizer, tokenize_dataset

    files = sorted(video_dir.iterdir())
    cells = [{"path": None, "bytes": f.read_bytes()} for f in files]
    dataset = datasets.Dataset.from_dict({"clip": cells}, features=datasets.Features({"clip": datasets.Video(decode=False)}))
    model, processor, _ = load_tokenizer(str(model_dir), "video", device="cpu")
    tokenize_dataset(model, processor, dataset, "clip", tmp_path / "out", batch_size=2, progress=False, num_workers=0,
                     video=True)
    _, tokens = read_tokens(tmp_path / "out")
    assert tokens == [want.reshape(-1).tolist() for _, want, _ in direct(model_dir, video_dir)[2]]
    assert not [f for f in os.listdir(tempfile.gettempdir()) if f.startswith("vistok-video-")]


def test_video_data_for_an_image_tokenizer_is_a_clear_error(video_dir, tmp_path, capsys):
    folder = saved_tester("titok-vq", tmp_path / "titok")
    assert tokenize_main([str(folder), str(video_dir), str(tmp_path / "out"), "--no-progress"]) == 2
    assert "tokenizes images, but the data holds videos" in capsys.readouterr().err


def test_grid_tokens_of_clips_kept_at_their_own_sizes(video_dir, tmp_path):
    """Emu3's processor keeps each clip's aspect (smart resize): one batch holds clips of several sizes, encoded in
    groups of one size; rows keep their own token grid, recorded in a `token_shape` column."""
    from vistok import Emu3VideoProcessor

    folder = tmp_path / "emu3"
    TESTERS["emu3-video"].make_model().save_pretrained(folder)
    Emu3VideoProcessor(spatial_factor=2, min_pixels=16 * 16, max_pixels=48 * 48, do_sample_frames=True,
                       num_frames=8).save_pretrained(folder)
    out = tmp_path / "out"
    assert tokenize_main([str(folder), str(video_dir), str(out), "--batch-size", "3", "--shard-size", "2",
                          "--no-progress"]) == 0
    expected = [want for _, want, _ in direct(folder, video_dir)[2]]
    assert len({tuple(want.shape) for want in expected}) > 1, "the clips should give token grids of several sizes"
    table = pq.read_table(out / "data" / "train-00000-of-00002.parquet").to_pydict()
    table1 = pq.read_table(out / "data" / "train-00001-of-00002.parquet").to_pydict()
    assert table["row"] + table1["row"] == [0, 1, 2]
    assert table["tokens"] + table1["tokens"] == [want.reshape(-1).tolist() for want in expected]
    assert table["token_shape"] + table1["token_shape"] == [list(want.shape) for want in expected]


def test_video_folder_without_datasets_video_feature(video_dir, monkeypatch):
    """datasets < 3.2 has no Video feature: a video folder is read as a column of file paths, in file order."""
    import datasets

    from vistok.media_datasets import iter_examples, load_media_dataset

    monkeypatch.delattr(datasets, "Video")
    dataset, column, split, kind = load_media_dataset(str(video_dir), max_items=2)
    assert (column, split, kind) == ("video", "train", "video")
    examples = list(iter_examples(dataset, column, kind))
    assert [(e.row, e.name, e.value) for e in examples] == [
        (index, f"clip_{index}.mp4", str(video_dir / f"clip_{index}.mp4")) for index in range(2)]
