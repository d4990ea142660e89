"""The ``vistok-eval`` and ``vistok-tokenize`` commands.

Their arguments are parsed here with argparse alone, so ``--help`` and usage errors answer at once (this module
imports neither torch nor transformers); the work itself (``vistok.evaluation.run``, ``vistok.tokenize_dataset.run``)
is imported only when a command runs. ``vistok-convert`` lives in ``vistok.conversion.__main__``.
"""

import argparse
import json
import logging
import sys
from pathlib import Path


def json_object(text: str) -> dict:
    """argparse type: a JSON object given on the command line."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({error})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(value).__name__} {text!r}")
    return value


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the items come from, the same in both commands: DATA, --split, --image-column, --max-images."""
    parser.add_argument("data", help="image or video folder (datasets' imagefolder / videofolder) or Hub dataset id")
    parser.add_argument("--split", default=None, help="dataset split (default: validation, else test, else train)")
    parser.add_argument("--image-column", "--column", default=None,
                        help="image or video column (default: the first Image or Video feature)")
    parser.add_argument("--max-images", type=int, default=None, help="use only the first N images or videos")


def eval_parser() -> argparse.ArgumentParser:
    """The ``vistok-eval`` arguments (see ``vistok.evaluation``)."""
    parser = argparse.ArgumentParser(
        prog="vistok-eval",
        description="Reconstruction PSNR/SSIM of a vistok tokenizer on an image or video folder or a Hub dataset; "
        "optionally also the tokens (the parquet dataset of vistok-tokenize) and every reconstruction as a file.",
    )
    parser.add_argument("model", help="model directory or Hub id (loaded with AutoModel + AutoImageProcessor), or a "
                        "released variant name (e.g. titok-l32), converted once from its original Hub release")
    add_data_arguments(parser)
    parser.add_argument("--output-dir", default="vistok-eval",
                        help="where report.json, report.md, grid.png (and tokens/, reconstructions/) go "
                        "(default: vistok-eval)")
    parser.add_argument("--save-tokens", action="store_true",
                        help="also write OUTPUT_DIR/tokens: the parquet shards vistok-tokenize writes")
    parser.add_argument("--save-reconstructions", action="store_true",
                        help="also write every reconstruction: OUTPUT_DIR/reconstructions/<file name>.png (.mp4 for videos)")
    parser.add_argument("--shard-size", type=int, default=1000, help="rows per parquet shard of --save-tokens")
    parser.add_argument("--fps", type=float, default=8.0, help="frame rate of the reconstructed mp4 files")
    parser.add_argument("--batch-size", type=int, default=16, help="images per encode/decode call (default: 16)")
    parser.add_argument("--streaming", action="store_true", help="stream the Hub dataset (with --max-images)")
    parser.add_argument("--decode-kwargs", default=None, type=json_object, metavar="JSON",
                        help='extra model.decode arguments, e.g. \'{"num_steps": 25, "guidance_scale": 7.5}\'')
    parser.add_argument("--seed", type=int, default=0, help="seed for stochastic decoders")
    parser.add_argument("--num-tokens", type=int, default=None, help="decode only the first K tokens (1D tokenizers)")
    parser.add_argument("--grid-images", type=int, default=8, help="images shown in grid.png (0: no grid; default: 8)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"],
                        help="weights dtype (default: float32)")
    parser.add_argument("--metrics", default="psnr,ssim", type=lambda text: tuple(text.split(",")),
                        help="comma-separated from psnr,ssim,lpips,rfid; lpips and rfid fetch their feature networks "
                        "(AlexNet, InceptionV3 via torch-fidelity) on first use")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--skip-corrupt", action="store_true",
                        help="skip unreadable image files (listed in the report) instead of stopping")
    return parser


def tokenize_parser() -> argparse.ArgumentParser:
    """The ``vistok-tokenize`` arguments (see ``vistok.tokenize_dataset`` and DESIGN §5b)."""
    parser = argparse.ArgumentParser(
        prog="vistok-tokenize",
        description="Encode an image dataset with a vistok tokenizer into parquet shards of token ids (or latents). "
        "Resumable; data-parallel under `accelerate launch`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", help="model folder, Hub id, or released variant name (e.g. titok-l32)")
    add_data_arguments(parser)
    parser.add_argument("out", help="output folder (parquet shards under OUT/data/)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per encode call")
    parser.add_argument("--shard-size", type=int, default=1000, help="rows per parquet shard (the unit of resumption)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader worker processes decoding and preprocessing (default: CPUs per process - 1)")
    parser.add_argument("--device", default=None, help="default: the accelerate process's device")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload OUT as a Hub dataset repo")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def eval_main(argv=None) -> int:
    """``vistok-eval``: evaluates, writes the report files and prints a summary; 2 on a ValueError."""
    args = eval_parser().parse_args(argv)
    from .evaluation import format_table, run

    try:
        report = run(args)
    except ValueError as error:
        print(f"vistok-eval: error: {error}", file=sys.stderr)
        return 2
    print(format_table(report))
    written = ["report.json", "report.md"] + (["grid.png"] if (Path(args.output_dir) / "grid.png").exists() else [])
    written += [path.rstrip("/") + "/" for path in report.get("outputs", {}).values()]
    print(f"wrote {', '.join(written)} to {args.output_dir}")
    return 0


def tokenize_main(argv=None) -> int:
    """``vistok-tokenize``: writes the parquet shards (this process's share under ``accelerate launch``)."""
    args = tokenize_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .tokenize_dataset import run

    try:
        out = run(args)
    except ValueError as error:
        print(f"vistok-tokenize: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote parquet shards to {out / 'data'}")
    return 0


__all__ = ["eval_main", "eval_parser", "json_object", "tokenize_main", "tokenize_parser"]
