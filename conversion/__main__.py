"""``vistok-convert ARCH SOURCE DEST`` (also ``python -m vistok.conversion``): port an original released checkpoint."""

import argparse
import importlib
import inspect
import logging
import sys
from pathlib import Path

from ..registry import converters


logger = logging.getLogger("vistok.conversion")


# ARCH -> module exposing ``convert(source, config_file, presets_file) -> ConversionResult``; from vistok.registry
CONVERTERS = converters()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vistok-convert",
        description="Convert an original released checkpoint into a vistok (transformers) model directory.",
    )
    parser.add_argument("arch", help=f"architecture, one of: {', '.join(sorted(CONVERTERS))}")
    parser.add_argument(
        "source",
        help="directory laid out like the release, a single checkpoint file, a Hub repo id of an original release "
        "or a released variant name (e.g. titok-l32); Hub sources download only the files the converter reads",
    )
    parser.add_argument("dest", help="output directory, loadable with AutoModel / AutoImageProcessor")
    parser.add_argument("--config", default=None, help="original config (json/yaml) when SOURCE is a single file")
    parser.add_argument(
        "--preset-overrides", default=None, help='JSON {"<preset>": {"hidden_size": .., ...}} for unknown presets'
    )
    parser.add_argument(
        "--vision-tokenizer", default=None, metavar="PATH_OR_REPO",
        help="emu3: the vision tokenizer release (folder or Hub id; default SOURCE/vision_tokenizer, else "
        "BAAI/Emu3-VisionTokenizer)",
    )
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="weights dtype")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="also push the result to this Hub repo")
    parser.add_argument("--force", action="store_true", help="overwrite a non-empty DEST")
    parser.add_argument("--no-verify", action="store_true", help="skip reloading DEST after writing it")
    return parser


def describe(arch: str) -> str:
    """What ``vistok-convert ARCH --help`` adds: the converter's own description (layouts, presets, examples)."""
    module = importlib.import_module(f"..{CONVERTERS[arch]}", __package__)
    return f"\n{arch}: " + (module.__doc__ or "").strip() + "\n"


def detect_architecture(source) -> list[str]:
    """Architectures whose key signature matches SOURCE's checkpoint (empty when it cannot be read)."""
    from .utils import ConversionError, checkpoint_keys, find_checkpoint_file

    try:
        keys = checkpoint_keys(find_checkpoint_file(source))
    except (ConversionError, OSError, ValueError):
        return []
    found = []
    for arch, module_name in CONVERTERS.items():
        looks_like = getattr(importlib.import_module(f"..{module_name}", __package__), "looks_like", None)
        if looks_like is not None and looks_like(keys):
            found.append(arch)
    return found


def convert(arch, source, dest, config=None, preset_overrides=None, dtype=None, push_to_hub=None, force=False, verify=True,
            vision_tokenizer=None):
    """Python entry point of the CLI; returns the destination path. ``vision_tokenizer``: for converters that read a
    second release (Emu3's AR model and its vision tokenizer)."""
    from .utils import ConversionError, check_paths, resolve_source, save_conversion

    if arch not in CONVERTERS:
        raise ConversionError(f"unknown architecture {arch!r}; choose one of {sorted(CONVERTERS)}.")
    module = importlib.import_module(f"..{CONVERTERS[arch]}", __package__)
    options = {}
    if vision_tokenizer is not None:
        if "vision_tokenizer" not in inspect.signature(module.convert).parameters:
            raise ConversionError(f"--vision-tokenizer does not apply to {arch}.")
        options["vision_tokenizer"] = vision_tokenizer
    check_paths(source, dest, force)  # before any download
    with resolve_source(arch, source, module) as local_source:
        try:
            result = module.convert(local_source, config_file=config, presets_file=preset_overrides, **options)
        except ConversionError as error:
            others = [name for name in detect_architecture(local_source) if name != arch]
            if others:
                raise ConversionError(f"{error}\nSOURCE looks like a {' / '.join(others)} checkpoint, not {arch}: "
                                      f"try `vistok-convert {others[0]} ...`.") from error
            raise
    for note in result.notes:
        logger.warning("note: %s", note)
    return save_conversion(
        result, dest, dtype=dtype, force=force, push_to_hub=push_to_hub, verify=verify, source=source, arch=arch
    )


def resolve_model(model: str) -> str:
    """MODEL of ``vistok-eval`` / ``vistok-tokenize``: a local folder or Hub id of a vistok model is returned as is; a
    released variant name (``titok-l32``, ``maetok-b-128``, ``flextok_d18_d28_in1k``) is converted once from its
    original Hub release into ``$HF_HOME/vistok/converted/<variant>`` and that folder is returned."""
    from huggingface_hub import constants

    from .utils import variant_hub_ids

    if Path(model).exists():
        return model
    for arch in CONVERTERS:
        for name in variant_hub_ids(arch):
            if name.lower().replace("-", "_") == model.lower().replace("-", "_"):
                dest = Path(constants.HF_HOME) / "vistok" / "converted" / name
                if not (dest / "config.json").is_file():
                    logger.info("converting the released %s variant %s into %s", arch, name, dest)
                    convert(arch, name, dest, force=True)
                return str(dest)
    return model


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    positional = [a for a in argv if not a.startswith("-")]
    if {"-h", "--help"} & set(argv) and positional and positional[0] in CONVERTERS:
        parser.epilog = describe(positional[0])
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .utils import ConversionError

    try:
        dest = convert(
            args.arch,
            args.source,
            args.dest,
            config=args.config,
            preset_overrides=args.preset_overrides,
            dtype=args.dtype,
            push_to_hub=args.push_to_hub,
            force=args.force,
            verify=not args.no_verify,
            vision_tokenizer=args.vision_tokenizer,
        )
    except ConversionError as error:
        print(f"vistok-convert: error: {error}", file=sys.stderr)
        return 2
    print(f"converted {args.arch} checkpoint {args.source} -> {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
