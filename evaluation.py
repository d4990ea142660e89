"""Reconstruction quality of vistok tokenizers: PSNR / SSIM in torch and the ``vistok-eval`` command.

```
vistok-eval MODEL DATA [--output-dir DIR] [--save-tokens] [--save-reconstructions] [--batch-size N]
            [--max-images N] [--split SPLIT] [--decode-kwargs JSON] [--seed S] [--num-tokens K] [--column COL]
            [--metrics psnr,ssim,lpips,rfid] [--streaming] [--grid-images N] [--device DEV] [--dtype DTYPE]
```

MODEL is a local directory, a Hub id or a released variant name (converted once from its original Hub release) of
any vistok tokenizer. DATA is a local image or video folder (``datasets``' ``imagefolder`` / ``videofolder``) or a
Hub dataset id with an ``Image`` or ``Video`` column. Every item goes through the model's image (or video)
processor, ``model.encode`` and ``model.decode`` (token ids for discrete tokenizers, latents otherwise); original and
reconstruction are mapped back to [0, 1] RGB by the processor's ``postprocess`` and compared there. The command
writes ``DIR/report.json``, ``DIR/report.md`` and ``DIR/grid.png`` (originals above their reconstructions), prints a
short summary table, and with

* ``--save-tokens``: ``DIR/tokens/``, the parquet dataset ``vistok-tokenize`` writes (same ``ShardWriter``; the
  tokens come from the same encode call that the metrics use, nothing is encoded twice);
* ``--save-reconstructions``: ``DIR/reconstructions/<file name>.png`` per image, ``.mp4`` per video.

From Python:

```python
>>> from vistok.evaluation import evaluate_reconstruction
>>> from vistok.media_datasets import iter_examples, load_media_dataset
>>> dataset, column, split, kind = load_media_dataset("path/to/images", max_items=100)
>>> result = evaluate_reconstruction(model, processor, iter_examples(dataset, column, kind), batch_size=16)
>>> result.mean_psnr, result.mean_ssim
```
"""

import argparse
import inspect
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from .cli import eval_main as main, eval_parser as build_parser  # noqa: F401  (the command; parsing stays light)
from .media_datasets import Example, find_image_column, iter_images, load_image_dataset  # noqa: F401  (public here)
from .metrics import DESCRIPTIONS


logger = logging.getLogger("vistok.evaluation")


# ----------------------------------------------------------------------------------------------------------- metrics


def _check_pair(prediction: torch.Tensor, target: torch.Tensor) -> None:
    if prediction.shape != target.shape:
        raise ValueError(f"prediction and target must have the same shape, got {tuple(prediction.shape)} and "
                         f"{tuple(target.shape)}.")
    if prediction.ndim != 4:
        raise ValueError(f"expected images of shape [batch, channels, height, width], got {tuple(prediction.shape)}.")


def psnr(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB.

    Args:
        prediction, target: `[B, C, H, W]` images with values in `[0, data_range]`.
        data_range: the peak value (1.0 for images in [0, 1]).

    Returns: `[B]` float64 tensor, `10 * log10(data_range**2 / MSE)` with the MSE over channels and pixels of each
    image; `inf` where the images are identical.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check_pair(prediction, target)
    return peak_signal_noise_ratio(prediction.double(), target.double(), data_range=data_range, reduction="none",
                                   dim=(1, 2, 3))


def ssim(
    prediction: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity (Wang et al., 2004) per image.

    Local means, variances and covariance come from a normalised Gaussian window (`window_size` taps, standard
    deviation `sigma`) applied to every channel separately; only positions where the window lies fully inside the
    image are used ("valid" filtering, as the reference implementation). The SSIM map is averaged over those positions
    and then over channels. Constants: `C1 = (k1 * data_range)**2`, `C2 = (k2 * data_range)**2`. This equals
    scikit-image's `structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=1, channel_axis=-1)`.

    Args:
        prediction, target: `[B, C, H, W]` images with values in `[0, data_range]`, `H, W >= window_size`.

    Returns: `[B]` float64 tensor (1.0 for identical images).
    """
    _check_pair(prediction, target)
    if window_size % 2 != 1:
        raise ValueError(f"window_size must be odd, got {window_size}.")
    height, width = prediction.shape[-2:]
    if height < window_size or width < window_size:
        raise ValueError(f"SSIM with a {window_size}x{window_size} window needs images of at least that size, got "
                         f"{height}x{width}.")
    from torchmetrics.functional.image import structural_similarity_index_measure

    if int(3.5 * sigma + 0.5) * 2 + 1 != window_size:
        raise ValueError(f"torchmetrics derives the Gaussian window from sigma ({int(3.5 * sigma + 0.5) * 2 + 1} taps "
                         f"for sigma={sigma}), got window_size={window_size}.")
    # torchmetrics averages over the whole reflect-padded map; keep the positions whose window lies inside the image
    _, ssim_map = structural_similarity_index_measure(
        prediction.double(), target.double(), gaussian_kernel=True, sigma=sigma, kernel_size=window_size,
        data_range=data_range, k1=k1, k2=k2, reduction="none", return_full_image=True,
    )
    pad = (window_size - 1) // 2
    return ssim_map[..., pad:-pad, pad:-pad].flatten(2).mean(dim=2).mean(dim=1)


# -------------------------------------------------------------------------------------------------------- evaluation


def to_unit_range(image_processor, images: torch.Tensor) -> torch.Tensor:
    """Model-range images `[B, C, H, W]` (or clips `[B, T, C, H, W]`) -> float tensor of the same shape in [0, 1]
    (clamped), through the processor's `postprocess(..., output_type="pt")`, or by inverting its rescale/normalise
    settings when its `postprocess` has another signature (transformers' own processors)."""
    postprocess = getattr(image_processor, "postprocess", None)
    if postprocess is not None and "output_type" in inspect.signature(postprocess).parameters:
        return postprocess(images, output_type="pt")
    images = images.detach().float().cpu()
    channels = (1,) * (images.ndim - 4) + (-1, 1, 1)
    if getattr(image_processor, "do_normalize", False):
        mean = torch.tensor(image_processor.image_mean, dtype=torch.float32).view(1, *channels)
        std = torch.tensor(image_processor.image_std, dtype=torch.float32).view(1, *channels)
        images = images * std + mean
    if getattr(image_processor, "do_rescale", False):
        images = images * (image_processor.rescale_factor * 255.0)
    return images.clamp(0.0, 1.0)


def _count_tokens(source: torch.Tensor, discrete: bool) -> tuple[int, list[int]]:
    # ids: [B, N] / [B, h, w] -> every entry is a token; latents: [B, N, D] -> N tokens of width D
    shape = list(source.shape[1:])
    if discrete or source.ndim == 2:
        return math.prod(shape), shape
    if source.ndim == 3:
        return shape[0], shape[:1]
    return math.prod(shape[1:]), shape[1:]


def _accepts_keyword(function, name: str) -> bool:
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


@dataclass
class ReconstructionResult:
    """Per-item metrics of one evaluation run (an item is an image or a video).

    psnr / ssim: one value per item (dB / unitless), in dataset order. files: the item's file name when known; rows:
    its index in the dataset. tokens_per_image: tokens the decoder consumed per item; token_shape: their layout
    without the batch dimension. discrete: whether token ids were decoded. image_size: `(H, W)` of the compared
    images or frames; num_frames: frames per clip (None for images).
    grid_originals / grid_reconstructions: `[K, C, H, W]` in [0, 1], the first K images (first frames of clips).
    """

    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    files: list[str | None] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    tokens_per_image: int | None = None
    token_shape: list[int] | None = None
    discrete: bool | None = None
    image_size: tuple[int, int] | None = None
    num_frames: int | None = None
    grid_originals: torch.Tensor | None = None
    grid_reconstructions: torch.Tensor | None = None
    lpips: list[float] = field(default_factory=list)
    rfid: float | None = None

    @property
    def num_images(self) -> int:
        return len(self.psnr)

    @property
    def mean_psnr(self) -> float:
        return sum(self.psnr) / len(self.psnr)

    @property
    def mean_ssim(self) -> float:
        return sum(self.ssim) / len(self.ssim)


def _batches(images: Iterable, batch_size: int):
    batch = []
    for image in images:
        batch.append(image)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _as_examples(items: Iterable):
    """`Example`s as they are; bare images or video paths become `Example(position, file name, item)`."""
    for position, item in enumerate(items):
        if isinstance(item, Example):
            yield item
        else:
            name = os.path.basename(getattr(item, "filename", "") or (item if isinstance(item, str) else "")) or None
            yield Example(position, name, item)


@torch.inference_mode()
def evaluate_reconstruction(
    model,
    image_processor,
    images: Iterable,
    batch_size: int = 16,
    decode_kwargs: dict | None = None,
    seed: int = 0,
    num_tokens: int | None = None,
    grid_images: int = 8,
    total: int | None = None,
    progress: bool = True,
    metrics=None,
    video: bool = False,
    on_batch=None,
) -> ReconstructionResult:
    """Encodes and decodes `images` (or videos) with `model` and measures PSNR and SSIM in [0, 1] RGB.

    Args:
        model: a vistok tokenizer (`encode`/`decode`), in eval mode, on the device to run on.
        image_processor: the model's image processor, or its video processor with `video=True` (`preprocess` into
            the model range, `postprocess` back).
        images: PIL images (any size and mode; the processor resizes and crops them), with `video=True` video files
            (paths or `{"path", "bytes"}` cells), or `vistok.media_datasets.Example`s holding either.
        batch_size: items per `encode`/`decode` call.
        decode_kwargs: extra arguments of `model.decode` (e.g. `{"num_steps": 25}` for FlexTok). When the model's
            decoder takes a `generator` and none is given, one seeded with `seed` is passed, so stochastic decoders
            give the same result on every run with the same batch size. Video tokenizers whose decoder takes
            `num_frames` (LARP) get the clip length.
        seed: seeds `torch` and that generator.
        num_tokens: decode only the first `num_tokens` tokens of each item (variable-length 1D tokenizers).
        grid_images: how many leading images (first frames of clips) to keep for the comparison grid.
        total: number of items, for the progress bar.
        progress: show a progress bar.
        metrics: a `vistok.metrics.ReconstructionMetrics` (default: PSNR and SSIM); LPIPS and rFID when it has them.
            A clip's PSNR uses the MSE over all its frames; SSIM and LPIPS are averaged over its frames.
        video: the items are videos (`[B, T, 3, H, W]` after the video processor).
        on_batch: called once per batch as `on_batch(examples, kind, encoded, reconstructed)`: the batch's
            `Example`s, `"tokens"` or `"latents"`, per example what `encode` gave (before `num_tokens`) and its
            reconstruction in [0, 1] (`[C, H, W]` or `[T, C, H, W]`, on the CPU). `vistok-eval` saves tokens and
            reconstruction files through it. Items that the processor gives different sizes (Emu3) are encoded in
            groups of one size; results follow that order.
    """
    from .metrics import ReconstructionMetrics
    from .tokenize_dataset import ProcessorCollate, encode_batch

    metrics = metrics if metrics is not None else ReconstructionMetrics(("psnr", "ssim"))
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
    if num_tokens is not None and num_tokens < 1:
        raise ValueError(f"num_tokens must be a positive integer, got {num_tokens}.")
    decode_kwargs = dict(decode_kwargs or {})
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    accepted = getattr(model, "decode_parameters", None)
    accepts_generator = "generator" in accepted if accepted is not None else _accepts_keyword(model.decode, "generator")
    if "generator" not in decode_kwargs and accepts_generator:
        decode_kwargs["generator"] = torch.Generator(device=device).manual_seed(seed)
    layout = getattr(model, "layout", None)
    rgb = (layout.num_channels if layout is not None else getattr(model.config, "num_channels", 3)) == 3
    collate = ProcessorCollate(image_processor, video, rgb=rgb)

    result = ReconstructionResult()
    originals_kept, reconstructions_kept = [], []
    bar = tqdm(total=total, unit="video" if video else "img", desc="vistok-eval", disable=not progress)
    for batch in _batches(_as_examples(images), batch_size):
        by_row = {example.row: example for example in batch}
        done, encoded_items, reconstructed_items = [], [], []
        for rows, pixel_values in collate([(example.row, example.value) for example in batch]):
            kind, encoded = encode_batch(model, pixel_values.to(device=device, dtype=dtype))
            discrete, source = kind == "tokens", encoded
            if num_tokens is not None:
                if source.ndim > 3 or (discrete and source.ndim != 2):
                    raise ValueError(f"--num-tokens keeps a prefix of 1D token sequences, but this model's tokens "
                                     f"have shape {tuple(source.shape)}.")
                source = source[:, :num_tokens]
            group_kwargs = dict(decode_kwargs)
            if video and getattr(model, "decode_takes_num_frames", False):
                group_kwargs.setdefault("num_frames", pixel_values.shape[1])
            reconstruction = model.decode(source, **group_kwargs).reconstruction
            original = to_unit_range(image_processor, pixel_values)
            reconstructed = to_unit_range(image_processor, reconstruction.float())
            if reconstructed.shape != original.shape:
                raise ValueError(f"the reconstruction has shape {tuple(reconstructed.shape)} but the input has "
                                 f"{tuple(original.shape)}.")
            metrics.update(reconstructed, original)
            done += [by_row[row] for row in rows.tolist()]
            encoded_items += list(encoded)
            reconstructed_items += list(reconstructed)
            result.tokens_per_image, result.token_shape = _count_tokens(source, discrete)
            result.discrete = discrete
            result.image_size = tuple(original.shape[-2:])
            result.num_frames = original.shape[1] if video else None
            kept = sum(len(chunk) for chunk in originals_kept)
            if kept < grid_images and (not originals_kept or originals_kept[0].shape[-2:] == original.shape[-2:]):
                first = (lambda x: x[:, 0]) if video else (lambda x: x)
                originals_kept.append(first(original)[: grid_images - kept])
                reconstructions_kept.append(first(reconstructed)[: grid_images - kept])
        result.files.extend(example.name for example in done)
        result.rows.extend(example.row for example in done)
        if on_batch is not None:
            on_batch(done, kind, encoded_items, reconstructed_items)
        bar.update(len(batch))
    bar.close()
    result.psnr, result.ssim = metrics.per_image.get("psnr", []), metrics.per_image.get("ssim", [])
    result.lpips, result.rfid = metrics.per_image.get("lpips", []), metrics.rfid()
    if not result.files:
        raise ValueError("no images to evaluate.")
    if originals_kept:
        result.grid_originals = torch.cat(originals_kept)
        result.grid_reconstructions = torch.cat(reconstructions_kept)
    return result


def make_grid(originals: torch.Tensor, reconstructions: torch.Tensor) -> Image.Image:
    """Two rows without padding: originals `[K, C, H, W]` on top, their reconstructions below (values in [0, 1]).
    Returns a `(K * W) x (2 * H)` RGB (or L) PIL image."""
    if originals.shape != reconstructions.shape or originals.ndim != 4:
        raise ValueError(f"expected two [K, C, H, W] tensors of one shape, got {tuple(originals.shape)} and "
                         f"{tuple(reconstructions.shape)}.")
    rows = [torch.cat(list(images), dim=-1) for images in (originals, reconstructions)]
    grid = (torch.cat(rows, dim=-2).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)


# ------------------------------------------------------------------------------------------------------------ report


def _json_float(value: float) -> float | None:
    # strict JSON has no inf: an exact reconstruction (infinite PSNR) is written as null
    return value if math.isfinite(value) else None


def build_report(result: ReconstructionResult, model_id: str, model=None, **extra) -> dict:
    """The `report.json` content: model id, image count, tokens per image, mean and per-image PSNR/SSIM."""
    codebook_size = None
    if model is not None and result.discrete:
        codebook_size = getattr(model, "vocab_size", None) or getattr(model.config, "codebook_size", None)
    report = {
        "model": model_id,
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        **extra,
        "num_images": result.num_images,
        "image_size": list(result.image_size),
        **({"num_frames": result.num_frames} if result.num_frames is not None else {}),
        "tokens_per_image": result.tokens_per_image,
        "token_shape": result.token_shape,
        "discrete": result.discrete,
        "codebook_size": codebook_size,
        "bits_per_image": (result.tokens_per_image * math.log2(codebook_size)) if codebook_size else None,
        "mean_psnr": _json_float(result.mean_psnr),
        "mean_ssim": result.mean_ssim,
        "metrics": {"psnr": DESCRIPTIONS["psnr"], "ssim": DESCRIPTIONS["ssim"]},
        "images": [
            {"index": index, "row": row, "file": file, "psnr": _json_float(p), "ssim": s}
            for index, (row, file, p, s) in enumerate(
                zip(result.rows or range(result.num_images), result.files, result.psnr, result.ssim))
        ],
    }
    if result.lpips:
        report["mean_lpips"] = sum(result.lpips) / len(result.lpips)
        report["metrics"]["lpips"] = DESCRIPTIONS["lpips"]
        for item, value in zip(report["images"], result.lpips):
            item["lpips"] = value
    if result.rfid is not None:
        report["rfid"] = result.rfid
        report["metrics"]["rfid"] = DESCRIPTIONS["rfid"]
    return report


def _fmt(value, digits: int) -> str:
    return "inf" if value is None else f"{value:.{digits}f}"


def format_table(report: dict) -> str:
    """The short summary printed by the command."""
    rows = [
        ("model", report["model"]),
        ("data", f"{report.get('data')} ({report.get('split')})" if report.get("data") else None),
        ("images", report["num_images"]),
        ("image size", "x".join(map(str, report["image_size"]))),
        ("tokens/image", report["tokens_per_image"]),
        ("PSNR (dB)", _fmt(report["mean_psnr"], 2)),
        ("SSIM", _fmt(report["mean_ssim"], 4)),
        ("LPIPS", _fmt(report["mean_lpips"], 4) if "mean_lpips" in report else None),
        ("rFID", _fmt(report["rfid"], 2) if "rfid" in report else None),
    ]
    rows = [(name, value) for name, value in rows if value is not None]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def format_markdown(report: dict, grid_file: str | None = "grid.png") -> str:
    lines = [
        f"# Reconstruction of `{report.get('data', 'images')}` by `{report['model']}`",
        "",
        "| model | images | image size | tokens / image | PSNR (dB) | SSIM |",
        "|---|---:|---:|---:|---:|---:|",
        f"| `{report['model']}` | {report['num_images']} | {'x'.join(map(str, report['image_size']))} | "
        f"{report['tokens_per_image']} | {_fmt(report['mean_psnr'], 2)} | {_fmt(report['mean_ssim'], 4)} |",
        "",
        f"PSNR: {report['metrics']['psnr']}. SSIM: {report['metrics']['ssim']}.",
        "",
    ]
    extra = [f"{name}: {_fmt(report[key], 4)} ({report['metrics'][metric]})" for name, key, metric in
             (("LPIPS (mean)", "mean_lpips", "lpips"), ("rFID", "rfid", "rfid")) if key in report]
    lines += [*extra, ""] if extra else []
    outputs = report.get("outputs") or {}
    if outputs:
        lines += [", ".join(f"{name}: `{path}`" for name, path in outputs.items()), ""]
    if grid_file:
        lines += ["Originals (top) and reconstructions (bottom):", "", f"![originals and reconstructions]({grid_file})",
                  ""]
    lines += ["## Per image", "", "| # | file | PSNR (dB) | SSIM |", "|---:|---|---:|---:|"]
    for item in report["images"]:
        lines.append(f"| {item['index']} | {item['file'] or ''} | {_fmt(item['psnr'], 2)} | {_fmt(item['ssim'], 4)} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, output_dir, grid: Image.Image | None = None) -> Path:
    """Writes `report.json`, `report.md` and (when given) `grid.png` into `output_dir`; returns the folder."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if grid is not None:
        grid.save(output_dir / "grid.png")
    (output_dir / "report.md").write_text(format_markdown(report, "grid.png" if grid is not None else None),
                                          encoding="utf-8")
    return output_dir


class ReconstructionFiles:
    """An ``on_batch`` sink of `evaluate_reconstruction` that writes every reconstruction into `folder`: an 8-bit PNG
    per image (the values of the processor's ``postprocess``: [0, 1] scaled by 255 and rounded) or an H.264 mp4 per
    clip (PyAV, `fps` frames per second). A file is named after its source file (``cat.jpg`` -> ``cat.png``), or
    after its row index when the name is unknown; a name already used gets ``-<row>`` appended. `names` maps each row
    to its file name."""

    def __init__(self, folder, fps: float = 8.0):
        self.folder, self.fps = Path(folder), fps
        self.folder.mkdir(parents=True, exist_ok=True)
        self.names: dict[int, str] = {}

    def _name(self, example, suffix: str) -> str:
        stem = os.path.splitext(example.name)[0] if example.name else f"{example.row:06d}"
        name = f"{stem}{suffix}"
        if name in self.names.values():
            name = f"{stem}-{example.row}{suffix}"
        self.names[example.row] = name
        return name

    def __call__(self, examples, kind, encoded, reconstructed: list[torch.Tensor]) -> None:
        for example, item in zip(examples, reconstructed, strict=True):
            item = (item.clamp(0, 1) * 255).round().to(torch.uint8)
            if item.ndim == 4:  # a clip [T, C, H, W]
                from .processing.pipeline_video_tokenization import write_video

                write_video(item.permute(0, 2, 3, 1).numpy(), self.folder / self._name(example, ".mp4"), fps=self.fps)
                continue
            array = item.permute(1, 2, 0).numpy()
            Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(
                self.folder / self._name(example, ".png"))


# --------------------------------------------------------------------------------------------------------------- CLI


def run(args: argparse.Namespace) -> dict:
    """Runs an evaluation for parsed CLI arguments; writes the report files (and tokens / reconstruction files when
    asked) and returns the report."""
    from .media_datasets import iter_examples, load_media_dataset
    from .metrics import ReconstructionMetrics
    from .tokenize_dataset import ShardWriter, load_tokenizer, write_info

    dataset, column, split, kind = load_media_dataset(args.data, args.split, args.max_images, args.image_column,
                                                      args.streaming)
    if args.save_tokens and args.streaming:
        raise ValueError("--save-tokens names its shards by the row count, which a streamed dataset does not know; "
                         "drop --streaming (with --max-images only those rows are downloaded).")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # a released variant name is converted from its Hub release first
    model, processor, _ = load_tokenizer(args.model, kind, args.dtype, device)
    output_dir = Path(args.output_dir)
    sinks, outputs = [], {}
    if args.save_tokens:
        tokens = ShardWriter(output_dir / "tokens", split, len(dataset), args.shard_size, model, args.model)
        sinks.append(lambda examples, kind, encoded, _: tokens.add([e.row for e in examples], kind, encoded))
        outputs["tokens"] = "tokens/data"
    if args.save_reconstructions:
        files = ReconstructionFiles(output_dir / "reconstructions", fps=args.fps)
        sinks.append(files)
        outputs["reconstructions"] = "reconstructions/"

    start = time.perf_counter()
    total = None if args.streaming else len(dataset)
    skipped = []
    examples = iter_examples(dataset, column, kind, skip_corrupt=args.skip_corrupt, skipped=skipped)
    result = evaluate_reconstruction(
        model, processor, examples, batch_size=args.batch_size,
        decode_kwargs=args.decode_kwargs, seed=args.seed, num_tokens=args.num_tokens, grid_images=args.grid_images,
        total=total, progress=not args.no_progress, metrics=ReconstructionMetrics(args.metrics, device=device),
        video=kind == "video", on_batch=(lambda *batch: [sink(*batch) for sink in sinks]) if sinks else None,
    )
    if args.save_tokens:
        num_shards = len(tokens.close())
        write_info(output_dir / "tokens", model=args.model, data=args.data, split=split, num_rows=len(dataset),
                   num_shards=num_shards, shard_size=args.shard_size)
    report = build_report(
        result, args.model, model, data=args.data, split=split, decode_kwargs=args.decode_kwargs or {}, seed=args.seed,
        device=str(device), dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        seconds=round(time.perf_counter() - start, 3), skipped_files=skipped, outputs=outputs,
    )
    if args.save_reconstructions:
        for item in report["images"]:
            item["reconstruction"] = f"reconstructions/{files.names[item['row']]}"
    grid = None
    if result.grid_originals is not None:
        grid = make_grid(result.grid_originals, result.grid_reconstructions)
    write_report(report, output_dir, grid)
    return report


__all__ = [
    "ReconstructionFiles",
    "ReconstructionResult",
    "build_report",
    "evaluate_reconstruction",
    "find_image_column",
    "format_markdown",
    "format_table",
    "iter_images",
    "load_image_dataset",
    "main",
    "make_grid",
    "psnr",
    "run",
    "ssim",
    "to_unit_range",
    "write_report",
]


if __name__ == "__main__":
    sys.exit(main())
