"""vistok-tokenize end to end (JPEG decode -> processor -> encode -> parquet) vs the encoder alone, the original
pretokenization script's per-image path, and peak memory.

For each model (random weights at a released size), in alternating rounds on the same JPEGs of mixed sizes:

* encoder: ``model.encode`` on pre-made batch-``B`` tensors (the ceiling);
* vistok: ``tokenize_dataset`` over the image folder (DataLoader workers decode and preprocess with the torchvision
  processor backend while the main process encodes; parquet shards written);
* original (``--reference PATH``, TiTok only: a checkout of bytedance/1d-tokenizer): the per-image path of its
  ``scripts/pretokenization.py`` (its ``ImageFolderWithFilename`` + ``center_crop_arr`` + ``ToTensor`` in the same
  number of DataLoader workers, its ``TiTok.encode``, codes collected as lists and dumped as JSON) with the same
  weights: the original model is built with random weights by the original code and converted with vistok-convert.
  The script itself also encodes a horizontally flipped copy of every image; that augmentation is left out here, so
  both sides do the same work per image.

``--profile`` also runs one tokenization under cProfile to show where the main process spends its time (the
processor must not run there when workers are used). Peak RSS of a fresh ``vistok-tokenize`` process is measured at
two dataset sizes (it must not grow with the dataset).

    nice python benchmarks/bench_tokenize.py --num-images 200 --rounds 3 --threads 2 --profile \\
        --reference /path/to/1d-tokenizer --markdown results/tokenize_cpu.md
"""

import argparse
import cProfile
import importlib.util
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import bench_reference
from bench_common import write_results


# variant -> (config, model, image processor) class names in vistok
MODELS = {
    "titok_s128": ("TiTokConfig", "TiTokModel", "TiTokImageProcessor"),
    "maetok-b-128": ("MAETokConfig", "MAETokModel", "MAETokImageProcessor"),
}


def make_jpegs(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` JPEGs with sides between 160 and 640 pixels (smooth gradients plus noise, like photos compress), in
    one class sub-folder (the layout torchvision's ``ImageFolder`` needs; ``imagefolder`` reads it as a label)."""
    images = folder / "class_0"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    for index in range(count):
        width, height = rng.randint(160, 641, size=2)
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 17.0 + index)], axis=-1)
        pixels = np.clip(base + 0.05 * rng.randn(height, width, 3), 0, 1)
        Image.fromarray((pixels * 255).astype(np.uint8)).save(images / f"img_{index:05d}.jpg", quality=90)
    return folder


def save_random_model(name: str, folder: Path) -> Path:
    import vistok
    from vistok.processing.image_processing_common import center_crop_image_processor

    config_class, model_class, processor_class = (getattr(vistok, class_name) for class_name in MODELS[name])
    torch.manual_seed(0)
    model = model_class(config_class.from_variant(name)).eval()
    model.save_pretrained(folder)
    center_crop_image_processor(processor_class, model.config.image_size).save_pretrained(folder)
    return folder


def original_titok(reference: str, config_name: str, workdir: Path):
    """The original TiTok (random weights, its own init) and the vistok conversion of its saved checkpoint."""
    titok = bench_reference.import_original(reference, "modeling.titok")
    from omegaconf import OmegaConf

    from vistok.conversion.__main__ import main as convert_main

    config = OmegaConf.load(Path(reference) / "configs" / "infer" / "TiTok" / f"{config_name}.yaml")
    torch.manual_seed(0)
    original = titok.TiTok(config).eval()
    original.save_pretrained(workdir / "original")
    assert convert_main(["titok", str(workdir / "original"), str(workdir / "vistok")]) == 0
    return original, workdir / "vistok"


def pretokenization_script(reference: str):
    """The original ``scripts/pretokenization.py`` as a module. Its module-level import of the training utilities
    (open_clip, webdataset, ...) is satisfied by a stub: the per-image path used here never touches them."""
    sys.modules.setdefault("utils.train_utils", types.SimpleNamespace(PretrainedTokenizer=None))
    spec = importlib.util.spec_from_file_location("pretokenization", Path(reference) / "scripts" / "pretokenization.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_original(script, original, data: Path, image_size: int, batch_size: int, num_workers: int, out: Path) -> int:
    """The script's per-image path: its dataset and transform, DataLoader, encode, codes as lists, one JSON file."""
    import torchvision.transforms as transforms

    transform = transforms.Compose([
        transforms.Lambda(lambda image: script.center_crop_arr(image, image_size)), transforms.ToTensor()])
    dataset = script.ImageFolderWithFilename(str(data), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    processed = []
    with torch.no_grad():
        for samples, targets, _ in loader:
            codes = original.encode(samples)[1]["min_encoding_indices"].flatten(1)
            processed += [{"class_id": int(t), "tokens": c.tolist()} for t, c in zip(targets, codes)]
    out.write_text(json.dumps(processed))
    return len(processed)


def run_vistok(model, processor, data: Path, batch_size: int, num_workers, out: Path) -> int:
    from vistok.media_datasets import load_media_dataset
    from vistok.tokenize_dataset import tokenize_dataset

    dataset, column, split, _ = load_media_dataset(str(data))
    tokenize_dataset(model, processor, dataset, column, out, split=split, batch_size=batch_size, shard_size=64,
                     num_workers=num_workers, progress=False)
    return len(dataset)


def run_encoder(model, image_size: int, batch_size: int, count: int) -> int:
    pixel_values = torch.rand(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for _ in range(-(-count // batch_size)):
            model.encode(pixel_values)
    return -(-count // batch_size) * batch_size


def images_per_second(fn) -> float:
    start = time.perf_counter()
    count = fn()
    return count / (time.perf_counter() - start)


def profile_main_process(model, processor, data: Path, batch_size: int, num_workers) -> dict:
    """Where the main process spends a tokenization: seconds in the processor (collate), in ``encode``, in all."""
    with tempfile.TemporaryDirectory() as out:
        profiler = cProfile.Profile()
        profiler.enable()
        run_vistok(model, processor, data, batch_size, num_workers, Path(out))
        profiler.disable()
    stats = pstats.Stats(profiler).stats
    total = max(entry[3] for entry in stats.values())

    def cumulative(file_part: str, name: str) -> float:
        return sum(entry[3] for (file, _, function), entry in stats.items() if file_part in file and function == name)

    return {"main_process_s": total, "processor_s": cumulative("tokenize_dataset.py", "__call__"),
            "encode_s": cumulative("tokenizer_utils.py", "encode")}


def peak_rss_mib(model_dir: Path, data: Path, batch_size: int) -> float:
    """Peak RSS (MiB) of a fresh process running vistok-tokenize on `data` (workers not included)."""
    code = (
        "import resource, sys, tempfile; from vistok.tokenize_dataset import main; "
        f"out = tempfile.mkdtemp(); main([{str(model_dir)!r}, {str(data)!r}, out, '--batch-size', '{batch_size}', "
        "'--shard-size', '64', '--no-progress']); "
        "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=os.environ | {"HF_HUB_OFFLINE": "1"})
    return int(result.stdout.split("MAXRSS")[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--memory-sizes", nargs=2, type=int, default=[100, 300])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=None, help="default: vistok-tokenize's default")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians are reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the main process")
    parser.add_argument("--profile", action="store_true", help="cProfile one run of the main process")
    parser.add_argument("--reference", default=None, help="checkout of bytedance/1d-tokenizer (TiTok rows)")
    parser.add_argument("--reference-config", default="titok_s128")
    parser.add_argument("--output", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()

    from transformers import AutoImageProcessor, AutoModel

    from vistok.tokenize_dataset import default_num_workers

    torch.set_num_threads(args.threads)
    workers = default_num_workers() if args.num_workers is None else args.num_workers
    rows, load = [], {"start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folders = {n: make_jpegs(tmp / f"jpegs_{n}", n) for n in sorted({args.num_images, *args.memory_sizes})}
        data = folders[args.num_images]
        for name in args.models:
            original = script = None
            if args.reference and name.startswith("titok"):
                original, model_dir = original_titok(args.reference, args.reference_config, tmp / name)
                script = pretokenization_script(args.reference)
            else:
                model_dir = save_random_model(name, tmp / name)
            model = AutoModel.from_pretrained(model_dir).eval()
            processor = AutoImageProcessor.from_pretrained(model_dir)
            size = model.config.image_size
            runs = {"encoder": lambda: run_encoder(model, size, args.batch_size, args.num_images),
                    "vistok": lambda: run_vistok(model, processor, data, args.batch_size, workers,
                                                 Path(tempfile.mkdtemp(dir=tmp)))}
            if original is not None:
                runs["original"] = lambda: run_original(script, original, data, size, args.batch_size, workers,
                                                        Path(tempfile.mkdtemp(dir=tmp)) / "pretokenized.json")
            run_encoder(model, size, args.batch_size, args.batch_size)  # warm-up
            speeds = {key: [] for key in runs}
            for _ in range(args.rounds):
                for key, fn in runs.items():
                    speeds[key].append(images_per_second(fn))
            row = {"model": name, "images": args.num_images, "batch_size": args.batch_size, "num_workers": workers,
                   "img_s": {key: statistics.median(values) for key, values in speeds.items()}, "all_img_s": speeds}
            row["fraction_of_encoder"] = row["img_s"]["vistok"] / row["img_s"]["encoder"]
            if "original" in speeds:
                row["vistok_over_original"] = row["img_s"]["vistok"] / row["img_s"]["original"]
            if args.profile:
                row["profile"] = profile_main_process(model, processor, data, args.batch_size, workers)
            row["peak_rss_mib"] = {n: peak_rss_mib(model_dir, folders[n], args.batch_size) for n in args.memory_sizes}
            rows.append(row)
            print(json.dumps(row), flush=True)
    load["end"] = os.getloadavg()

    def markdown() -> str:
        lines = [f"Load average (1, 5, 15 min) at start {load['start']}, at end {load['end']}; {args.threads} torch "
                 f"threads, {workers} DataLoader worker(s), batch {args.batch_size}, median of {args.rounds} "
                 "alternating rounds.", "",
                 "| model | images | encoder img/s | vistok-tokenize img/s | fraction | original script img/s | "
                 "vistok / original | peak RSS (MiB) by images |",
                 "|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            speed = r["img_s"]
            memory = ", ".join(f"{n}: {v:.0f}" for n, v in r["peak_rss_mib"].items())
            original = f"{speed['original']:.2f}" if "original" in speed else "-"
            ratio = f"{r['vistok_over_original']:.2f}" if "vistok_over_original" in r else "-"
            lines.append(f"| {r['model']} | {r['images']} | {speed['encoder']:.2f} | {speed['vistok']:.2f} | "
                         f"{r['fraction_of_encoder']:.0%} | {original} | {ratio} | {memory} |")
        return "\n".join(lines) + "\n"

    write_results({"rows": rows, "threads": args.threads, "load_average": load}, args.output, args.markdown, markdown)
    print(markdown())


if __name__ == "__main__":
    main()
