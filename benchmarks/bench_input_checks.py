"""What the per-call input checks of the tokenizer API cost: `encode`/`decode` (checks included) against the same
work without them (`_encode`/`_decode`), alternating in one process, at batch 8 and the released sizes.

    python benchmarks/bench_input_checks.py [--variants titok_s128 maetok-b-128] [--repeats 5] [--threads 2]

Prints, per variant and op, the median time with and without the checks and their ratio.
"""

import argparse
import statistics
import time

import torch
from transformers import AutoModel

import vistok


def _median_pair(with_checks, without_checks, repeats: int) -> tuple[float, float]:
    timings = {True: [], False: []}
    with torch.inference_mode():
        with_checks(), without_checks()  # warm-up
        for _ in range(repeats):
            for checked, fn in ((True, with_checks), (False, without_checks)):
                start = time.perf_counter()
                fn()
                timings[checked].append(time.perf_counter() - start)
    return statistics.median(timings[True]), statistics.median(timings[False])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["titok_s128", "maetok-b-128"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{'variant':<16} {'op':<7} {'checked s':>10} {'unchecked s':>12} {'ratio':>7}")
    for name in args.variants:
        config_class = vistok.TiTokConfig if name in vistok.TITOK_VARIANTS else vistok.MAETokConfig
        model = AutoModel.from_config(config_class.from_variant(name)).eval()
        size = model.config.image_size
        pixel_values = torch.rand(args.batch_size, 3, size, size) * 2 - 1
        with torch.inference_mode():
            encoded = model.encode(pixel_values)
        rows = {
            "encode": (lambda: model.encode(pixel_values), lambda: model._encode(pixel_values)),
            "decode": (lambda: model.decode(encoded.latents), lambda: model._decode(encoded.latents)),
        }
        for op, (checked, unchecked) in rows.items():
            with_checks, without = _median_pair(checked, unchecked, args.repeats)
            print(f"{name:<16} {op:<7} {with_checks:>10.4f} {without:>12.4f} {with_checks / without:>7.3f}")


if __name__ == "__main__":
    main()
