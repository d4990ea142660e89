"""Mutation score of the test suite over the foundation modules (not part of the timed suite).

```
pip install "mutmut<3"          # the mutation engine (not a vistok dependency)
python benchmarks/mutation_score.py [--sample 30] [--seed 0] [--modules quantizers layers ...]
                                   [--tests-rev REV] [--output results.json]
```

mutmut 2's mutation operators (numbers, operators, comparisons, keywords, strings, arguments, assignments, decorators)
generate every mutant of each module; a fixed random subset of ``--sample`` mutants per module (``random.Random(seed)``
over mutmut's stable mutant order; ``--sample 0`` runs them all) is applied one at a time to a private copy of the
repository, and the module's targeted test selection (``SELECTIONS`` below) runs against it. A mutant is *killed*
when the selection fails or runs past ``--timeout``. The working tree is never modified.

``--tests-rev REV`` runs the ``tests/`` folder of a git revision instead of the working tree's (the "before" score).
To avoid paying torch/transformers' import for every mutant, a parent process imports them once and forks a child
per mutant; the child imports vistok (mutated) fresh and runs pytest in-process.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]

# module key -> (file, pytest arguments); files or test ids that do not exist at the tested revision are dropped
SELECTIONS = {
    "quantizers": ("modeling/quantizers.py", [
        "tests/test_quantizers.py", "tests/test_layers.py",
        "tests/test_common_tokenizers.py::test_encode_decode_contract",
        "tests/test_titok.py::test_vae_sampling_is_reproducible",
        "tests/test_titok.py::test_converted_bfloat16_keeps_codebook_fp32",
    ]),
    "tokenizer_utils": ("modeling/tokenizer_utils.py", [
        "tests/test_tokenizer_api.py",
        "tests/test_common_tokenizers.py::test_encode_decode_contract",
        "tests/test_common_tokenizers.py::test_bad_inputs_raise_clear_errors",
    ]),
    "layers": ("modeling/layers.py", [
        "tests/test_layer_values.py", "tests/test_layers.py",
        "tests/test_maetok.py::test_parity_with_original",
        "tests/test_titok.py::test_parity_hub_layout",
        "tests/test_common_tokenizers.py::test_eager_matches_sdpa",
    ]),
    "conversion_utils": ("conversion/utils.py", [
        "tests/test_conversion_utils.py",
        "tests/test_titok.py::test_conversion_rejects_missing_and_extra_tensors",
        "tests/test_titok.py::test_conversion_rejects_unknown_preset_corrupt_file_and_non_empty_dest",
        "tests/test_titok.py::test_conversion_rejects_executable_pickles",
        "tests/test_titok.py::test_converted_bfloat16_keeps_codebook_fp32",
        "tests/test_maetok.py::test_conversion_is_strict",
        "tests/test_maetok.py::test_conversion_of_a_training_checkpoint_without_aux_keeps_mask_settings",
    ]),
    "processing": ("processing/*.py", [
        "tests/test_processors.py",
        "tests/test_common_tokenizers.py::test_image_processor",
        "tests/test_titok.py::test_pil_processor_matches_original_preprocessing",
        "tests/test_maetok.py::test_pil_processor_reproduces_adm_center_crop",
        "tests/test_flextok.py::test_processor_matches_original_transforms",
        "tests/test_common_tokenizers.py::test_image_tokenization_pipeline",
    ]),
}


def _git_export(rev: str, target: Path, *paths: str) -> None:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, *paths], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)


def _copy_repository(destination: Path, tests_rev: str | None, source_rev: str | None = None) -> Path:
    source = destination / "vistok"
    if source_rev is not None:
        source.mkdir()
        _git_export(source_rev, source)
    else:
        shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "results"))
    if tests_rev is not None:
        shutil.rmtree(source / "tests")
        _git_export(tests_rev, source, "tests")
    return source


def _existing(selection: list[str], root: Path) -> list[str]:
    kept = []
    for item in selection:
        path, _, name = item.partition("::")
        if not (root / path).is_file():
            continue
        if name and f"def {name}(" not in (root / path).read_text():
            continue
        kept.append(item)
    return kept


def _run_child(root: Path, args: list[str], timeout: float) -> str:
    """Runs pytest in a forked child (vistok is imported fresh there); returns 'survived', 'killed' or 'timeout'."""
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.chdir(root)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1), os.dup2(devnull, 2)
            import pytest

            code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *args])
        except BaseException:
            code = 99
        os._exit(int(code))
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "survived" if os.waitstatus_to_exitcode(status) == 0 else "killed"
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(0.05)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", nargs="*", default=list(SELECTIONS), choices=list(SELECTIONS))
    parser.add_argument("--sample", type=int, default=30, help="mutants per module (0 = all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tests-rev", default=None, help="git revision whose tests/ folder is run")
    parser.add_argument("--source-rev", default=None, help="git revision to mutate (default: the working tree)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per mutant before it counts as killed")
    parser.add_argument("--output", default=None, help="write the per-mutant results as JSON")
    args = parser.parse_args(argv)

    from mutmut import ALL, Context, list_mutations, mutate

    workdir = Path(tempfile.mkdtemp(prefix="vistok-mutation-"))
    root = _copy_repository(workdir, args.tests_rev, args.source_rev)
    os.environ.update({
        "PYTHONPATH": str(workdir) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "VISTOK_PARITY_DIR": os.environ.get("VISTOK_PARITY_DIR", str(REPO.parent / "shared" / "parity")),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "HF_HOME": str(workdir / "hf"), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
    })
    sys.path.insert(0, str(workdir))
    sys.path.insert(0, str(root / "tests"))
    # warm imports shared by every child (vistok itself is never imported here)
    import numpy  # noqa: F401
    import PIL.Image  # noqa: F401
    import pytest  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModel, PreTrainedModel, pipeline  # noqa: F401

    for name in ("torchvision", "diffusers", "diffusers.models", "peft", "accelerate", "datasets", "hypothesis",
                 "transformers.pipelines", "transformers.image_processing_backends", "huggingface_hub"):
        try:
            __import__(name)
        except ImportError:
            pass
    from diffusers import AutoencoderKL  # noqa: F401  (FlexTok's VAE, the slowest import)

    results = {}
    for key in args.modules:
        pattern, selection = SELECTIONS[key]
        selection = _existing(selection, root)
        files = sorted(root.glob(pattern))
        mutants = []
        for path in files:
            ids = list_mutations(Context(filename=str(path), mutation_id=ALL))
            mutants.extend((path, mutation_id) for mutation_id in ids)
        sample = mutants if args.sample <= 0 or args.sample >= len(mutants) else \
            random.Random(f"{args.seed}-{key}").sample(mutants, args.sample)
        start = time.monotonic()
        if _run_child(root, selection, args.timeout * 2) != "survived":
            print(f"{key}: the unmutated selection fails; fix it first: {selection}", file=sys.stderr)
            return 1
        print(f"{key}: {len(sample)} of {len(mutants)} mutants, selection {selection} "
              f"(clean run {time.monotonic() - start:.0f}s)", flush=True)
        records = []
        for path, mutation_id in sample:
            original = path.read_text()
            mutated, count = mutate(Context(source=original, mutation_id=mutation_id, filename=str(path)))
            if count != 1:
                continue
            changed = [(a, b) for a, b in zip(original.split("\n"), mutated.split("\n")) if a != b]
            path.write_text(mutated)
            try:
                status = _run_child(root, selection, args.timeout)
            finally:
                path.write_text(original)
            record = {"file": str(path.relative_to(root)), "line_number": mutation_id.line_number + 1,
                      "index": mutation_id.index, "status": status,
                      "before": changed[0][0].strip() if changed else "", "after": changed[0][1].strip() if changed else ""}
            records.append(record)
            print(f"  {status:8s} {record['file']}:{record['line_number']}  {record['before']!r} -> {record['after']!r}",
                  flush=True)
        killed = sum(r["status"] != "survived" for r in records)
        results[key] = {"killed": killed, "total": len(records), "population": len(mutants), "mutants": records}
        print(f"{key}: killed {killed}/{len(records)} ({100 * killed / max(len(records), 1):.1f}%)", flush=True)
    print("\nmodule | killed / sampled | score | mutants in module")
    for key, result in results.items():
        print(f"{key} | {result['killed']}/{result['total']} | {100 * result['killed'] / max(result['total'], 1):.1f}% "
              f"| {result['population']}")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
