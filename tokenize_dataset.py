"""``vistok-tokenize MODEL DATA OUT``: encode an image dataset with a vistok tokenizer into parquet shards of tokens.

    vistok-tokenize MODEL DATA OUT [--batch-size N] [--split SPLIT] [--shard-size ROWS] [--push-to-hub REPO]
                    [--image-column COL] [--max-images N] [--num-workers W] [--device DEV] [--dtype DTYPE]
    accelerate launch --multi_gpu --num_processes P $(which vistok-tokenize) MODEL DATA OUT   # data-parallel

MODEL: a converted model folder, a Hub id, or a released variant name (converted once, like ``vistok-eval``). DATA: an
image folder (``datasets``' imagefolder) or a Hub dataset id. OUT receives ``data/<split>-<i>-of-<n>.parquet``, one
row per source image: ``row`` (its index in DATA's split) and ``tokens`` (the ids, flattened in the model's token
order: ``[N]`` for 1D tokenizers, ``h*w`` / ``t*h*w`` row-major for grid tokenizers) or, for continuous tokenizers,
``latents`` (``[N][D]``). The token shape before flattening is stored in the parquet metadata and in
``OUT/vistok_tokenize.json``. ``datasets.load_dataset("parquet", data_dir=OUT)`` reads the result.

Shards are the unit of work and of resumption: shard ``i`` holds rows ``[i * shard_size, (i + 1) * shard_size)``, is
written to a temporary name and renamed when complete, so a rerun on the same OUT keeps the shards that exist and
makes the missing ones. Under ``accelerate launch`` each process takes its own shards
(``PartialState.split_between_processes``); the result is the same as one process's.
"""

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

import torch


logger = logging.getLogger("vistok.tokenize")

INFO_FILE = "vistok_tokenize.json"


class _ShardImages(torch.utils.data.Dataset):
    """Rows ``[start, stop)`` of the dataset's image column, decoded (in DataLoader workers when there are any)."""

    def __init__(self, dataset, column: str, start: int, stop: int):
        self.dataset, self.column, self.start, self.stop = dataset, column, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int):
        return self.start + index, self.dataset[self.start + index][self.column]


class _Collate:
    """Runs the model's processor on a batch: images -> ``pixel_values`` ``[B, 3, H, W]``, videos ->
    ``pixel_values_videos`` ``[B, T, 3, H, W]`` (the layout the tokenizer declares)."""

    def __init__(self, processor, video: bool):
        self.processor, self.video = processor, video

    def __call__(self, batch):
        rows = torch.tensor([row for row, _ in batch], dtype=torch.int64)
        items = [item for _, item in batch]
        if self.video:
            return rows, self.processor(videos=items, return_tensors="pt")["pixel_values_videos"]
        items = [image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image for image in items]
        return rows, self.processor(items, return_tensors="pt")["pixel_values"]


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


def write_shard(path: Path, rows: list[torch.Tensor], values: list[torch.Tensor], kind: str, metadata: dict) -> None:
    """Writes one parquet shard atomically (temporary file in the same folder, then ``os.replace``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = torch.cat(values)
    row_ids = torch.cat(rows).numpy()
    if kind == "tokens":
        flat = values.reshape(values.shape[0], -1).to(torch.int32).numpy()
        column = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
    else:
        latents = values.float().reshape(values.shape[0], -1, values.shape[-1]).numpy()
        inner = pa.FixedSizeListArray.from_arrays(pa.array(latents.reshape(-1)), latents.shape[-1])
        column = pa.FixedSizeListArray.from_arrays(inner, latents.shape[1])
    table = pa.table({"row": pa.array(row_ids), kind: column})
    table = table.replace_schema_metadata({"vistok": json.dumps(metadata)})
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, temporary)
    os.replace(temporary, path)


def tokenize_dataset(
    model,
    processor,
    dataset,
    column: str,
    out_dir,
    split: str = "train",
    batch_size: int = 16,
    shard_size: int = 1000,
    num_workers: int = 0,
    progress: bool = True,
    model_id: str | None = None,
) -> list[Path]:
    """Encodes ``dataset[column]`` into ``out_dir/data/*.parquet``; returns this process's new shard paths.

    Run in one process, or in each process of an ``accelerate launch`` (every process calls this with the same
    arguments; shards still missing are divided between the processes)."""
    from tqdm.auto import tqdm

    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be positive, got {batch_size} and {shard_size}.")
    state = process_state()
    data_dir = Path(out_dir) / "data"
    num_rows = len(dataset)
    if num_rows == 0:
        raise ValueError("the dataset has no rows to tokenize.")
    num_shards = max(1, math.ceil(num_rows / shard_size))
    paths = [data_dir / shard_name(split, index, num_shards) for index in range(num_shards)]
    if state.is_main_process:
        data_dir.mkdir(parents=True, exist_ok=True)
        for leftover in data_dir.glob(f".{split}-*.tmp"):  # partial writes of an interrupted run
            leftover.unlink()
        stale = {p for p in data_dir.glob(f"{split}-*.parquet")} - set(paths)
        if stale:
            raise ValueError(f"{data_dir} holds shards of another run ({sorted(p.name for p in stale)[:3]}...): "
                             f"use the same --shard-size and data, or a new OUT.")
    state.wait_for_everyone()
    todo = [index for index, path in enumerate(paths) if not path.is_file()]
    state.wait_for_everyone()  # every process lists the same missing shards before any is written
    layout = getattr(model, "layout", None)
    video = layout is not None and "image" not in layout.inputs
    collate = _Collate(processor, video)
    written = []
    with state.split_between_processes(todo) as mine:
        total = min(num_rows, sum(min(shard_size, num_rows - i * shard_size) for i in mine))
        bar = tqdm(total=total, desc=f"tokenizing ({state.process_index})", unit="img",
                   disable=not progress or not state.is_local_main_process)
        for index in mine:
            start, stop = index * shard_size, min(num_rows, (index + 1) * shard_size)
            loader = torch.utils.data.DataLoader(
                _ShardImages(dataset, column, start, stop), batch_size=batch_size, collate_fn=collate,
                num_workers=num_workers,
            )
            rows, values, kind = [], [], None
            for batch_rows, pixel_values in loader:
                kind, encoded = encode_batch(model, pixel_values.to(state.device, next(model.parameters()).dtype))
                rows.append(batch_rows)
                values.append(encoded.cpu())
                bar.update(len(batch_rows))
            metadata = {"model": model_id, "split": split, "kind": kind,
                        "token_shape": list(values[0].shape[1:]), "token_layout": getattr(layout, "tokens", None),
                        "process_index": state.process_index}
            write_shard(paths[index], rows, values, kind, metadata)
            written.append(paths[index])
        bar.close()
    state.wait_for_everyone()
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vistok-tokenize",
        description="Encode an image dataset with a vistok tokenizer into parquet shards of token ids (or latents). "
        "Resumable; data-parallel under `accelerate launch`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", help="model folder, Hub id, or released variant name (e.g. titok-l32)")
    parser.add_argument("data", help="image folder (datasets' imagefolder) or Hub dataset id")
    parser.add_argument("out", help="output folder (parquet shards under OUT/data/)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per encode call")
    parser.add_argument("--split", default=None, help="dataset split (default: validation, else test, else train)")
    parser.add_argument("--shard-size", type=int, default=1000, help="rows per parquet shard (the unit of resumption)")
    parser.add_argument("--image-column", default=None, help="image column (default: the first Image feature)")
    parser.add_argument("--max-images", type=int, default=None, help="tokenize only the first N images")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes for decoding")
    parser.add_argument("--device", default=None, help="default: the accelerate process's device")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload OUT as a Hub dataset repo")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def run(args: argparse.Namespace) -> Path:
    from transformers import AutoImageProcessor, AutoModel, AutoVideoProcessor

    from .conversion.__main__ import resolve_model
    from .evaluation import load_image_dataset

    state = process_state()
    with state.main_process_first():  # one process converts a variant / downloads the data, the others reuse it
        model_path = resolve_model(args.model)
        dataset, column, split = load_image_dataset(args.data, args.split, args.max_images, args.image_column)
    model = AutoModel.from_pretrained(model_path, dtype=getattr(torch, args.dtype))
    if not hasattr(model, "encode"):
        raise ValueError(f"{args.model!r} loads as {type(model).__name__}, which is not a tokenizer with encode.")
    model = model.to(args.device or state.device).eval()
    video = "image" not in model.layout.inputs
    processor = (AutoVideoProcessor if video else AutoImageProcessor).from_pretrained(model_path)
    tokenize_dataset(
        model, processor, dataset, column, args.out, split=split, batch_size=args.batch_size,
        shard_size=args.shard_size, num_workers=args.num_workers, progress=not args.no_progress, model_id=args.model,
    )
    out = Path(args.out)
    if state.is_main_process:
        files = sorted((out / "data").glob(f"{split}-*.parquet"))
        info = {"model": args.model, "data": args.data, "split": split, "num_rows": len(dataset),
                "num_shards": len(files), "shard_size": args.shard_size}
        (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if args.push_to_hub:
            from huggingface_hub import HfApi

            api = HfApi()
            api.create_repo(args.push_to_hub, repo_type="dataset", exist_ok=True)
            api.upload_folder(repo_id=args.push_to_hub, folder_path=out, repo_type="dataset",
                              allow_patterns=["data/*.parquet", INFO_FILE])
    state.wait_for_everyone()
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = run(args)
    except ValueError as error:
        print(f"vistok-tokenize: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote parquet shards to {out / 'data'}")
    return 0


__all__ = ["build_parser", "encode_batch", "main", "run", "tokenize_dataset", "write_shard"]


if __name__ == "__main__":
    sys.exit(main())
