"""``vistok-tokenize MODEL DATA OUT``: encode an image or video dataset with a vistok tokenizer into parquet shards.

    vistok-tokenize MODEL DATA OUT [--batch-size N] [--split SPLIT] [--shard-size ROWS] [--push-to-hub REPO]
                    [--column COL] [--max-images N] [--num-workers W] [--device DEV] [--dtype DTYPE]
    accelerate launch --multi_gpu --num_processes P $(which vistok-tokenize) MODEL DATA OUT   # data-parallel

MODEL: a converted model folder, a Hub id, or a released variant name (converted once, like ``vistok-eval``). DATA: an
image or video folder (``datasets``' imagefolder / videofolder) or a Hub dataset id with an ``Image`` or ``Video``
column; videos go to the model's video processor as files (decoded with PyAV) and must be what the model takes
(LARP, Emu3: ``[B, T, 3, H, W]``). OUT receives ``data/<split>-<i>-of-<n>.parquet``, one row per source image or
video: ``row`` (its index in DATA's split) and ``tokens`` (the ids, flattened in the model's token order: ``[N]`` for
1D tokenizers, ``h*w`` / ``t*h*w`` row-major for grid tokenizers) or, for continuous tokenizers, ``latents``
(``[N][D]``). The layout (``1d`` / ``grid``) and, for 1D tokenizers, the token shape are in the parquet metadata;
grid tokenizers (whose grid follows each item's size) add a ``token_shape`` column, each row's grid.
``OUT/vistok_tokenize.json`` records the run. ``datasets.load_dataset("parquet", data_dir=OUT)`` reads the result.

Decoding and preprocessing run in DataLoader worker processes (``--num-workers``; by default the CPUs left beside
the process running the model), overlapped with the encoder.

Shards are the unit of work and of resumption: shard ``i`` holds rows ``[i * shard_size, (i + 1) * shard_size)``, is
written to a temporary name and renamed when complete, so a rerun on the same OUT keeps the shards that exist and
makes the missing ones. Under ``accelerate launch`` each process takes its own shards
(``PartialState.split_between_processes``); the result is the same as one process's. ``ShardWriter`` is the one writer
(``vistok-eval --save-tokens`` uses it too).
"""

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

import torch

from .cli import tokenize_main as main, tokenize_parser as build_parser  # noqa: F401  (the command; parsing stays light)


logger = logging.getLogger("vistok.tokenize")

INFO_FILE = "vistok_tokenize.json"


class _RowItems(torch.utils.data.Dataset):
    """``(row, item)`` for the given rows of the dataset's image or video column (images are decoded here, in the
    DataLoader workers when there are any; video cells are read undecoded)."""

    def __init__(self, dataset, column: str, rows: list[int]):
        self.dataset, self.column, self.rows = dataset, column, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        row = self.rows[index]
        return row, self.dataset[row][self.column]


def default_num_workers(num_processes: int = 1) -> int:
    """DataLoader worker processes per process: the CPUs this process may use, shared between the ``num_processes``
    processes, less one for the process that runs the model (at most 8)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(8, cpus // max(1, num_processes) - 1))


class ProcessorCollate:
    """Runs the model's processor on a batch of ``(row, item)`` pairs: images -> ``pixel_values`` ``[b, 3, H, W]``,
    video cells (paths or ``{"path", "bytes"}`` dicts, decoded with PyAV by the video processor) ->
    ``pixel_values_videos`` ``[b, T, 3, H, W]``.

    Returns a list of ``(rows [b] int64, pixel values)`` groups: items that preprocess to one shape share a group
    (one group when the processor gives every item one size; processors that keep each item's size, such as
    Emu3's, may give several)."""

    def __init__(self, processor, video: bool, rgb: bool = True):
        self.processor, self.video, self.rgb = processor, video, rgb

    def __call__(self, batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        from .media_datasets import video_files

        rows = [row for row, _ in batch]
        items = [item for _, item in batch]
        if self.video:
            with video_files(items) as paths:
                processed = self.processor(videos=paths)["pixel_values_videos"]
        else:
            if self.rgb:
                items = [image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image for image in items]
            processed = self.processor(items)["pixel_values"]
        groups: dict[tuple, list[int]] = {}
        for index, item in enumerate(processed):
            groups.setdefault(tuple(item.shape), []).append(index)
        return [(torch.tensor([rows[i] for i in indices], dtype=torch.int64),
                 torch.stack([torch.as_tensor(processed[i]) for i in indices])) for indices in groups.values()]


def process_state():
    """accelerate's ``PartialState`` of this process. Under ``accelerate launch --multi_gpu`` (torchrun) on a machine
    without CUDA, or with ``ACCELERATE_USE_CPU=1``, the processes form a gloo CPU group (``PartialState(cpu=True)``;
    accelerate's own multi-CPU launcher needs mpirun)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or ("LOCAL_RANK" in os.environ and not torch.cuda.is_available())
    return PartialState(cpu=cpu)


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.parquet"


def encode_batch(model, pixel_values: torch.Tensor) -> tuple[str, torch.Tensor]:
    """("tokens", ids ``[B, ...]``) for discrete tokenizers, ("latents", ``[B, N, D]``) for continuous ones."""
    with torch.no_grad():
        encoded = model.encode(pixel_values)
    if encoded.tokens is not None:
        return "tokens", encoded.tokens
    return "latents", encoded.latents


def write_shard(path: Path, rows: list[int], values: list[torch.Tensor], kind: str, metadata: dict,
                per_row_shape: bool = False) -> None:
    """Writes one parquet shard atomically (temporary file in the same folder, then ``os.replace``): ``rows`` and
    one value per row (ids of any shape, flattened; or latents ``[N, D]``). With ``per_row_shape`` (grid tokenizers,
    whose grid follows each item's size) ``tokens`` holds lists of any length and a ``token_shape`` column holds each
    row's grid; otherwise every row has the metadata's ``token_shape``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shapes = [list(value.shape) for value in values]
    columns = {"row": pa.array(rows, type=pa.int64())}
    if kind == "tokens" and per_row_shape:
        columns["tokens"] = pa.array([value.reshape(-1).to(torch.int32).numpy() for value in values],
                                     type=pa.list_(pa.int32()))
        columns["token_shape"] = pa.array(shapes, type=pa.list_(pa.int32()))
        metadata = {**metadata, "token_shape": None}
    elif kind == "tokens":
        flat = torch.stack(values).reshape(len(values), -1).to(torch.int32).numpy()
        columns["tokens"] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
        metadata = {**metadata, "token_shape": shapes[0]}
    else:
        latents = torch.stack(values).float().reshape(len(values), -1, values[0].shape[-1]).numpy()
        inner = pa.FixedSizeListArray.from_arrays(pa.array(latents.reshape(-1)), latents.shape[-1])
        columns["latents"] = pa.FixedSizeListArray.from_arrays(inner, latents.shape[1])
        metadata = {**metadata, "token_shape": shapes[0]}
    table = pa.table(columns).replace_schema_metadata({"vistok": json.dumps(metadata)})
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, temporary)
    os.replace(temporary, path)


class ShardWriter:
    """Writes encoded rows into the parquet shards of ``out_dir/data`` (``shard_size`` rows each, named for
    ``num_rows`` rows in all). Batches must arrive in increasing row order (``add`` once per batch); a shard is
    written (atomically) as soon as a batch starts past it, the rest on ``close()``. Rows that never arrive (skipped
    files) are absent from their shard.

    Args:
        out_dir: the output folder (shards go to ``out_dir/data``).
        split: the split name in the shard file names.
        num_rows: rows in the whole split (fixes the shard count).
        shard_size: rows per shard.
        model: the tokenizer (its ``layout.tokens`` is recorded); model_id: its name, recorded.
        process_index: the writing process, recorded.
        prepare: check the folder first (``prepare()``); in a multi-process run only the main process does.
    """

    def __init__(self, out_dir, split: str, num_rows: int, shard_size: int, model=None, model_id: str | None = None,
                 process_index: int = 0, prepare: bool = True):
        if shard_size < 1:
            raise ValueError(f"shard_size must be positive, got {shard_size}.")
        if num_rows < 1:
            raise ValueError("the dataset has no rows to tokenize.")
        self.data_dir = Path(out_dir) / "data"
        self.split, self.shard_size = split, shard_size
        num_shards = max(1, math.ceil(num_rows / shard_size))
        self.paths = [self.data_dir / shard_name(split, index, num_shards) for index in range(num_shards)]
        if prepare:
            self.prepare()
        layout = getattr(model, "layout", None)
        self.metadata = {"model": model_id, "split": split, "token_layout": getattr(layout, "tokens", None),
                         "process_index": process_index}
        self._buffer: dict[int, list] = {}
        self._kind = None
        self.written: list[Path] = []

    def prepare(self) -> None:
        """Creates the folder, removes partial writes of an interrupted run, and refuses shards of another layout."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.data_dir.glob(f".{self.split}-*.tmp"):
            leftover.unlink()
        stale = set(self.data_dir.glob(f"{self.split}-*.parquet")) - set(self.paths)
        if stale:
            raise ValueError(f"{self.data_dir} holds shards of another run ({sorted(p.name for p in stale)[:3]}...): "
                             f"use the same --shard-size and data, or a new OUT.")

    def add(self, rows, kind: str, values) -> None:
        """Adds one batch: ``rows`` ([B] indices in the split, all above those of earlier batches, any order within
        the batch) and their ``values``: a ``[B, ...]`` tensor or a list of per-row tensors, ids
        (``kind="tokens"``) or latents (``kind="latents"``). Shards before this batch's first one are written."""
        rows = [int(row) for row in rows]
        if not rows:
            return
        first = min(rows) // self.shard_size
        for shard in sorted(shard for shard in self._buffer if shard < first):
            self._flush(shard)
        self._kind = kind
        for row, value in zip(rows, values, strict=True):
            self._buffer.setdefault(row // self.shard_size, []).append((row, value.detach().cpu()))

    def _flush(self, shard: int) -> None:
        items = sorted(self._buffer.pop(shard), key=lambda item: item[0])
        write_shard(self.paths[shard], [row for row, _ in items], [value for _, value in items], self._kind,
                    {**self.metadata, "kind": self._kind}, per_row_shape=self.metadata["token_layout"] == "grid")
        self.written.append(self.paths[shard])

    def close(self) -> list[Path]:
        """Writes the shards still buffered; returns every path written."""
        for shard in sorted(self._buffer):
            self._flush(shard)
        return self.written


def write_info(out_dir, **info) -> None:
    """``OUT/vistok_tokenize.json``: the run's model, data, split, row and shard counts."""
    (Path(out_dir) / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def tokenize_dataset(
    model,
    processor,
    dataset,
    column: str,
    out_dir,
    split: str = "train",
    batch_size: int = 16,
    shard_size: int = 1000,
    num_workers: int | None = None,
    progress: bool = True,
    model_id: str | None = None,
    video: bool | None = None,
) -> list[Path]:
    """Encodes ``dataset[column]`` (images, or video cells with ``video=True``; default: what the model takes) into
    ``out_dir/data/*.parquet``; returns this process's new shard paths.

    Run in one process, or in each process of an ``accelerate launch`` (every process calls this with the same
    arguments; shards still missing are divided between the processes). ``num_workers``: DataLoader worker
    processes decoding and preprocessing (default: ``default_num_workers()``)."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    state = process_state()
    if video is None:
        layout = getattr(model, "layout", None)
        video = layout is not None and "image" not in layout.inputs
    num_workers = default_num_workers(state.num_processes) if num_workers is None else num_workers
    num_rows = len(dataset)
    writer = ShardWriter(out_dir, split, num_rows, shard_size, model, model_id, state.process_index, prepare=False)
    if state.is_main_process:
        writer.prepare()
    state.wait_for_everyone()
    todo = [index for index, path in enumerate(writer.paths) if not path.is_file()]
    state.wait_for_everyone()  # every process lists the same missing shards before any is written
    collate = ProcessorCollate(processor, video)
    with state.split_between_processes(todo) as mine:
        total = min(num_rows, sum(min(shard_size, num_rows - i * shard_size) for i in mine))
        bar = tqdm(total=total, desc=f"tokenizing ({state.process_index})", unit="video" if video else "img",
                   disable=not progress or not state.is_local_main_process)
        dtype = next(model.parameters()).dtype
        rows = [row for index in mine for row in range(index * shard_size, min(num_rows, (index + 1) * shard_size))]
        loader = torch.utils.data.DataLoader(
            _RowItems(dataset, column, rows), batch_size=batch_size, collate_fn=collate, num_workers=num_workers,
        )
        for groups in loader:  # a batch may span two shards: the writer splits it
            rows, values = [], []
            for group_rows, pixel_values in groups:
                kind, encoded = encode_batch(model, pixel_values.to(state.device, dtype))
                rows += group_rows.tolist()
                values += list(encoded)
            writer.add(rows, kind, values)
            bar.update(len(rows))
        written = writer.close()
        bar.close()
    state.wait_for_everyone()
    return written


def load_tokenizer(model: str, kind: str = "image", dtype="float32", device=None):
    """Loads a vistok tokenizer for ``kind`` (``"image"`` or ``"video"``) data: ``(model, processor, path)``.

    ``model`` is a folder, a Hub id or a released variant name (converted once, see ``resolve_model``); the processor
    is its ``AutoImageProcessor`` or ``AutoVideoProcessor``. ``dtype``: a torch dtype name or ``"auto"``."""
    from transformers import AutoImageProcessor, AutoModel, AutoVideoProcessor

    from .conversion.__main__ import resolve_model

    path = resolve_model(model)
    loaded = AutoModel.from_pretrained(path, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
    if not hasattr(loaded, "encode") or not hasattr(loaded, "decode"):
        raise ValueError(f"{model!r} loads as {type(loaded).__name__}, which is not a tokenizer with encode/decode.")
    inputs = loaded.layout.inputs
    if kind not in inputs:
        raise ValueError(f"{model!r} ({type(loaded).__name__}) tokenizes {' and '.join(inputs)}s, but the data holds "
                         f"{kind}s.")
    processor_class = AutoVideoProcessor if kind == "video" else AutoImageProcessor
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return loaded.to(device).eval(), processor_class.from_pretrained(path), path


def run(args: argparse.Namespace) -> Path:
    from .media_datasets import load_media_dataset

    state = process_state()
    with state.main_process_first():  # one process converts a variant / downloads the data, the others reuse it
        dataset, column, split, kind = load_media_dataset(args.data, args.split, args.max_images, args.image_column)
        model, processor, _ = load_tokenizer(args.model, kind, args.dtype, args.device or state.device)
    tokenize_dataset(
        model, processor, dataset, column, args.out, split=split, batch_size=args.batch_size,
        shard_size=args.shard_size, num_workers=args.num_workers, progress=not args.no_progress, model_id=args.model,
        video=kind == "video",
    )
    out = Path(args.out)
    if state.is_main_process:
        num_shards = len(sorted((out / "data").glob(f"{split}-*.parquet")))
        write_info(out, model=args.model, data=args.data, split=split, num_rows=len(dataset), num_shards=num_shards,
                   shard_size=args.shard_size)
        if args.push_to_hub:
            from huggingface_hub import HfApi

            api = HfApi()
            api.create_repo(args.push_to_hub, repo_type="dataset", exist_ok=True)
            api.upload_folder(repo_id=args.push_to_hub, folder_path=out, repo_type="dataset",
                              allow_patterns=["data/*.parquet", INFO_FILE])
    state.wait_for_everyone()
    return out


__all__ = [
    "ProcessorCollate",
    "ShardWriter",
    "build_parser",
    "default_num_workers",
    "encode_batch",
    "load_tokenizer",
    "main",
    "run",
    "tokenize_dataset",
    "write_info",
    "write_shard",
]


if __name__ == "__main__":
    sys.exit(main())
