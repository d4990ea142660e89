"""vistok-tokenize end to end (JPEG decode -> processor -> encode -> parquet) vs the encoder alone, and peak memory.

For each model (random weights at a released size): images/s of `tokenize_dataset` over a folder of generated JPEGs
of mixed sizes, against the encoder's own batch-`B` throughput on pre-made tensors (the ceiling); and the peak RSS of
a fresh `vistok-tokenize` process at two dataset sizes (it must not grow with the dataset).

    python benchmarks/bench_tokenize.py --num-images 300 --memory-sizes 100 300 --markdown results/tokenize.md
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench_common import median_seconds, write_results


# variant -> (config, model, image processor) class names in vistok
MODELS = {
    "titok_s128": ("TiTokConfig", "TiTokModel", "TiTokImageProcessor"),
    "maetok-b-128": ("MAETokConfig", "MAETokModel", "MAETokImageProcessor"),
}


def make_jpegs(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` JPEGs with sides between 160 and 640 pixels (smooth gradients plus noise, like photos compress)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    for index in range(count):
        width, height = rng.randint(160, 641, size=2)
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 17.0 + index)], axis=-1)
        pixels = np.clip(base + 0.05 * rng.randn(height, width, 3), 0, 1)
        Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / f"img_{index:05d}.jpg", quality=90)
    return folder


def save_random_model(name: str, folder: Path) -> Path:
    import vistok
    from vistok.processing.image_processing_common import square_image_processor

    config_class, model_class, processor_class = (getattr(vistok, class_name) for class_name in MODELS[name])
    torch.manual_seed(0)
    model = model_class(config_class.from_variant(name)).eval()
    model.save_pretrained(folder)
    square_image_processor(processor_class, model.config.image_size).save_pretrained(folder)
    return folder


def encoder_throughput(model_dir: Path, batch_size: int, iters: int) -> float:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir).eval()
    size = model.config.image_size
    pixel_values = torch.rand(batch_size, 3, size, size)
    return batch_size / median_seconds(lambda: model.encode(pixel_values), warmup=1, iters=iters, device="cpu")


def tokenize_throughput(model_dir: Path, data: Path, batch_size: int, num_workers: int, count: int) -> float:
    from transformers import AutoImageProcessor, AutoModel

    from vistok.evaluation import load_image_dataset
    from vistok.tokenize_dataset import tokenize_dataset

    model = AutoModel.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    dataset, column, split = load_image_dataset(str(data))
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        tokenize_dataset(model, processor, dataset, column, out, split=split, batch_size=batch_size,
                         shard_size=max(64, count // 4), num_workers=num_workers, progress=False)
        return count / (time.perf_counter() - start)


def peak_rss_mib(model_dir: Path, data: Path, batch_size: int, num_workers: int) -> float:
    """Peak RSS (MiB) of a fresh process running vistok-tokenize on `data` (workers not included)."""
    code = (
        "import resource, sys, tempfile; from vistok.tokenize_dataset import main; "
        f"out = tempfile.mkdtemp(); main([{str(model_dir)!r}, {str(data)!r}, out, '--batch-size', '{batch_size}', "
        f"'--num-workers', '{num_workers}', '--shard-size', '64', '--no-progress']); "
        "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=os.environ | {"HF_HUB_OFFLINE": "1"})
    return int(result.stdout.split("MAXRSS")[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--num-images", type=int, default=300)
    parser.add_argument("--memory-sizes", nargs=2, type=int, default=[100, 300])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--output", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sizes = sorted({args.num_images, *args.memory_sizes})
        folders = {n: make_jpegs(tmp / f"jpegs_{n}", n) for n in sizes}
        for name in args.models:
            model_dir = save_random_model(name, tmp / name)
            encoder = encoder_throughput(model_dir, args.batch_size, args.iters)
            end_to_end = tokenize_throughput(model_dir, folders[args.num_images], args.batch_size, args.num_workers,
                                             args.num_images)
            memory = {n: peak_rss_mib(model_dir, folders[n], args.batch_size, args.num_workers)
                      for n in args.memory_sizes}
            rows.append({"model": name, "images": args.num_images, "batch_size": args.batch_size,
                         "num_workers": args.num_workers, "encoder_img_s": encoder, "tokenize_img_s": end_to_end,
                         "fraction": end_to_end / encoder, "peak_rss_mib": memory})
            print(json.dumps(rows[-1]), flush=True)

    def markdown() -> str:
        lines = ["| model | images | encoder batch-8 img/s | vistok-tokenize img/s | fraction | peak RSS (MiB) by images |",
                 "|---|---:|---:|---:|---:|---|"]
        for r in rows:
            memory = ", ".join(f"{n}: {v:.0f}" for n, v in r["peak_rss_mib"].items())
            lines.append(f"| {r['model']} | {r['images']} | {r['encoder_img_s']:.2f} | {r['tokenize_img_s']:.2f} | "
                         f"{r['fraction']:.0%} | {memory} |")
        return "\n".join(lines) + "\n"

    write_results({"rows": rows, "threads": torch.get_num_threads()}, args.output, args.markdown, markdown)
    print(markdown())


if __name__ == "__main__":
    main()
