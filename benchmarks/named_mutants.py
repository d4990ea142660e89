"""The mistakes named in the test-quality issue, applied one at a time to this working tree; each runs the tests meant
to kill it and reverts the file (`python benchmarks/named_mutants.py`; run it on a clean tree, it rewrites sources).
PYTHONPATH must make `vistok` import from this tree."""
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
MUTANTS = [
    ("straight-through estimator with negated gradient", "modeling/quantizers.py",
     "quantized = z + (quantized - z).detach()", "quantized = (quantized + z).detach() - z",
     ["tests/test_quantizers.py::test_vq_straight_through_gradient_is_the_identity"]),
    ("VAE posterior std = exp(logvar)", "modeling/quantizers.py",
     "self.std = torch.exp(0.5 * self.logvar)", "self.std = torch.exp(self.logvar)",
     ["tests/test_quantizers.py::test_gaussian_posterior_hand_computed_std_sample_and_kl",
      "tests/test_quantizers.py::test_vae_tokenizer_samples_with_std_exp_half_logvar_and_reports_the_kl"]),
    ("pixel codebook no longer kept in float32", "modeling/modeling_titok.py",
     '_keep_in_fp32_modules_strict = ["quantizer", "pixel_codebook"]', '_keep_in_fp32_modules_strict = ["quantizer"]',
     ["tests/test_conversion_utils.py::test_half_precision_load_keeps_named_modules_in_float32",
      "tests/test_conversion_utils.py::test_convert_dtype_keeps_both_codebooks_in_float32"]),
    ("image resize floors instead of rounding", "processing/image_processing_maetok.py",
     "round(side * scale)", "int(side * scale)",
     ["tests/test_processors.py::test_adm_resize_rounds_the_long_side"]),
    ("raw weights win over EMA", "conversion/utils.py",
     '("ema", "state_dict", "model", "module")', '("state_dict", "model", "module", "ema")',
     ["tests/test_conversion_utils.py::test_training_checkpoints_unwrap_to_the_ema_weights",
      "tests/test_conversion_utils.py::test_convert_a_wrapped_training_checkpoint_takes_the_ema_weights"]),
    ("MAETok pixel decoder built with the encoder's patch size", "modeling/modeling_maetok.py",
     '"patch_size": config.decoder_patch_size,\n            "use_class_token": config.decoder_use_class_token,\n            "out_dim": config.decoder_patch_size**2',
     '"patch_size": config.patch_size,\n            "use_class_token": config.decoder_use_class_token,\n            "out_dim": config.patch_size**2',
     ["tests/test_tokenizer_api.py::test_maetok_pixel_decoder_uses_the_decoder_patch_size",
      "tests/test_common_tokenizers.py::test_encode_decode_contract"]),
]
for title, path, old, new, tests in MUTANTS:
    file = ROOT / path
    original = file.read_text()
    assert original.count(old) == 1, (title, original.count(old))
    file.write_text(original.replace(old, new))
    try:
        for test in tests:
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:warnings", test], cwd=ROOT,
                               capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            last = [l for l in r.stdout.splitlines() if "passed" in l or "failed" in l or "error" in l][-1:]
            print(f"{title}: {test}: {'KILLED' if r.returncode else 'SURVIVED'} ({last})", flush=True)
    finally:
        file.write_text(original)
print("git status after reverting:", subprocess.run(["git", "-C", str(ROOT), "status", "--short"], capture_output=True, text=True).stdout)
