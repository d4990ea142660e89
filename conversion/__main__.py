"""``vistok-convert ARCH SOURCE DEST`` (also ``python -m vistok.conversion``): port an original released checkpoint."""

import argparse
import importlib
import logging
import sys

from .utils import ConversionError, save_conversion


# ARCH -> module (in this package) exposing ``convert(source, config_file, presets_file) -> ConversionResult``
CONVERTERS = {
    "titok": "convert_titok",
    "flextok": "convert_flextok",
    "maetok": "convert_maetok",
    "emu3-vq": "convert_emu3_vq",
    "larp": "convert_larp",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vistok-convert",
        description="Convert an original released checkpoint into a vistok (transformers) model directory.",
    )
    parser.add_argument("arch", help=f"architecture, one of: {', '.join(sorted(CONVERTERS))}")
    parser.add_argument("source", help="directory laid out like the release, or a single checkpoint file")
    parser.add_argument("dest", help="output directory, loadable with AutoModel / AutoImageProcessor")
    parser.add_argument("--config", default=None, help="original config (json/yaml) when SOURCE is a single file")
    parser.add_argument(
        "--preset-overrides", default=None, help='JSON {"<preset>": {"hidden_size": .., ...}} for unknown presets'
    )
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="weights dtype")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="also push the result to this Hub repo")
    parser.add_argument("--force", action="store_true", help="overwrite a non-empty DEST")
    parser.add_argument("--no-verify", action="store_true", help="skip reloading DEST after writing it")
    return parser


def convert(arch, source, dest, config=None, preset_overrides=None, dtype=None, push_to_hub=None, force=False, verify=True):
    """Python entry point of the CLI; returns the destination path."""
    import vistok  # noqa: F401  (registers the Auto classes used to verify the result)

    if arch not in CONVERTERS:
        raise ConversionError(f"unknown architecture {arch!r}; choose one of {sorted(CONVERTERS)}.")
    module = importlib.import_module(f".{CONVERTERS[arch]}", __package__)
    result = module.convert(source, config_file=config, presets_file=preset_overrides)
    return save_conversion(result, dest, dtype=dtype, force=force, push_to_hub=push_to_hub, verify=verify)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
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
        )
    except ConversionError as error:
        print(f"vistok-convert: error: {error}", file=sys.stderr)
        return 2
    print(f"converted {args.arch} checkpoint {args.source} -> {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
