"""MAETok: parity with the original code, conversion, latent normalisation, mask modelling, auxiliary decoders,
decoder-only fine-tuning, Trainer/PEFT training and the ADM preprocessing."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, AutoModel

import vistok  # noqa: F401
from conftest import parity_case_dir, parity_cases
from vistok import MAETokConfig, MAETokImageProcessor, MAETokImageProcessorPil, MAETokModel
from vistok.conversion.__main__ import main as convert_main
from vistok.conversion.convert_maetok import convert as convert_maetok
from vistok.conversion.utils import ConversionError
from vistok.modeling.hog import HOGFeatures
from vistok.processing.image_processing_maetok import adm_resize


TOL = dict(atol=1e-4, rtol=1e-4)
TINY = dict(
    image_size=32, patch_size=8, decoder_patch_size=8, num_latent_tokens=8, latent_dim=8,
    encoder_hidden_size=32, encoder_num_hidden_layers=2, encoder_num_attention_heads=2,
    decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=2,
    aux_hidden_size=16, aux_num_hidden_layers=1, aux_num_attention_heads=1, aux_feature_patch_size=8,
    hog_cell_size=4, dino_feature_dim=12, siglip_feature_dim=10,
)


def tiny_model(seed: int = 0, **overrides) -> MAETokModel:
    """A tiny model whose adaLN layers are not zero (the original init leaves the decoders unconditioned)."""
    torch.manual_seed(seed)
    model = MAETokModel(MAETokConfig(**(TINY | overrides)))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "modulation" in name:
                param.normal_(0.0, 0.3)
    return model.eval()


def pixels(batch_size: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch_size, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ----- parity with the original code -----


CASES = parity_cases("maetok")
AUX_KEYS = {"hog": "aux_hog", "dino": "aux_dino", "siglip": "aux_clip"}


def _convert_case(parity_root, case, tmp_path):
    case_dir = parity_case_dir(parity_root, "maetok", case)
    dest = tmp_path / case
    args = ["maetok", str(case_dir / "original"), str(dest)]
    if (case_dir / "presets.json").is_file():
        args += ["--preset-overrides", str(case_dir / "presets.json")]
    assert convert_main(args) == 0
    model, info = AutoModel.from_pretrained(dest, output_loading_info=True)
    assert not any(info.values()), info
    return model.eval(), AutoImageProcessor.from_pretrained(dest), load_file(str(case_dir / "io.safetensors")), dest


@pytest.mark.parametrize("case", CASES)
def test_parity_with_original(parity_root, tmp_path, case):
    model, processor, io, _ = _convert_case(parity_root, case, tmp_path)
    meta = json.loads((parity_root / "maetok" / case / "meta.json").read_text())["config"]
    assert isinstance(model, MAETokModel) and isinstance(processor, MAETokImageProcessor)
    assert processor.crop_size["height"] == meta["image_size"] and list(processor.image_mean) == [0.5, 0.5, 0.5]
    assert (model.config.vq_mean, model.config.vq_std) == (meta["vq_mean"], meta["vq_std"])
    assert (model.config.patch_size, model.config.decoder_patch_size) == (meta["enc_patch_size"], meta["dec_patch_size"])
    assert getattr(model.config, "codebook_size", None) is None
    with torch.no_grad():
        encoded = model.encode(io["pixel_values"])
        assert encoded.tokens is None
        torch.testing.assert_close(encoded.encoder_output, io["encoder_output"], **TOL)
        torch.testing.assert_close(encoded.latents, io["latents"], **TOL)
        torch.testing.assert_close(encoded.normalized_latents, io["latents_normalized"], **TOL)
        # the normalisation written out: (z - vq_mean) / vq_std with the original config's values
        torch.testing.assert_close((io["latents"] - meta["vq_mean"]) / meta["vq_std"], io["latents_normalized"], **TOL)
        torch.testing.assert_close(model.normalize_latents(io["latents"]), io["latents_normalized"], **TOL)
        torch.testing.assert_close(model.decode(io["latents"]).reconstruction, io["reconstruction"], **TOL)
        # a diffusion sample lives in the normalised space
        from_normalized = model.decode(io["latents_normalized"], denormalize=True).reconstruction
        torch.testing.assert_close(from_normalized, io["reconstruction"], **TOL)
        torch.testing.assert_close(model(io["pixel_values"]).reconstruction, io["reconstruction"], **TOL)
        for target, key in AUX_KEYS.items():
            if key in io:
                torch.testing.assert_close(model.decode_features(io["latents"], target), io[key], **TOL)
    aux = (model.config.use_hog_decoder, model.config.use_dino_decoder, model.config.use_siglip_decoder)
    assert aux == tuple(key in io for key in AUX_KEYS.values())
    if "aux_dino" in io:
        assert (model.config.dino_feature_dim, model.config.siglip_feature_dim) == (
            io["aux_dino"].shape[-1], io["aux_clip"].shape[-1])
        # no teacher or HOG buffer survives the conversion
        assert not any(k.startswith(("repa_model", "clip_model", "projection", "hog.")) for k in model.state_dict())
        assert model.config.aux_use_class_token == meta["aux_dec_cls_token"]


def _case(parity_root, with_aux: bool):
    """The first case with (or without) auxiliary decoders, whatever the case names are."""
    for case in CASES:
        case_dir = parity_case_dir(parity_root, "maetok", case)
        if ("aux_hog" in load_file(str(case_dir / "io.safetensors"))) == with_aux:
            return case_dir
    pytest.fail(f"no MAETok parity case {'with' if with_aux else 'without'} auxiliary decoders")


def test_conversion_is_strict(parity_root, tmp_path):
    case_dir = _case(parity_root, with_aux=False)
    presets = str(case_dir / "presets.json")
    encoder_preset = json.loads((case_dir / "meta.json").read_text())["config"]["encoder_model"].split(".")[0]
    width = json.loads((case_dir / "meta.json").read_text())["tiny_registry_overrides"][encoder_preset]["embed_dim"]
    # the tiny timm names are not released presets: without overrides the head count is unknown
    with pytest.raises(ConversionError, match=encoder_preset):
        convert_maetok(case_dir / "original")
    # a single checkpoint file + --config, with an unknown extra tensor
    state = load_file(str(case_dir / "original" / "model.safetensors"))
    save_file(state | {"encoder.extra_head.weight": torch.zeros(2)}, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ConversionError, match="encoder.extra_head.weight"):
        convert_maetok(tmp_path / "extra.safetensors", config_file=case_dir / "original" / "config.json",
                       presets_file=presets)
    missing = {k: v for k, v in state.items() if k != "decoder.model.blocks.1.mlp.fc2.bias"}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ConversionError, match="decoder.layers.1.mlp.fc2.bias"):
        convert_maetok(tmp_path / "missing.safetensors", config_file=case_dir / "original" / "config.json",
                       presets_file=presets)
    with pytest.raises(ConversionError, match="--config"):
        convert_maetok(tmp_path / "missing.safetensors", presets_file=presets)
    # a wrong head count in the preset is caught through the preset / weight check
    (tmp_path / "bad.json").write_text(json.dumps({encoder_preset: {"hidden_size": width + 16}}))
    with pytest.raises(ConversionError, match=f"hidden_size={width}"):
        convert_maetok(case_dir / "original", presets_file=tmp_path / "bad.json")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("x")
    assert convert_main(["maetok", str(case_dir / "original"), str(dest), "--preset-overrides", presets]) == 2


def test_conversion_of_a_training_checkpoint_without_aux_keeps_mask_settings(parity_root, tmp_path):
    """A `.pt` training checkpoint (weights under "ema") is unwrapped; no mask token -> masking disabled."""
    case_dir = _case(parity_root, with_aux=False)
    state = load_file(str(case_dir / "original" / "model.safetensors"))
    state.pop("encoder.mask_token")
    torch.save({"ema": state, "steps": torch.tensor(3)}, tmp_path / "ckpt.pt")
    result = convert_maetok(tmp_path / "ckpt.pt", config_file=case_dir / "original" / "config.json",
                            presets_file=case_dir / "presets.json")
    assert result.model.config.mask_ratio_max == 0.0 and result.model.encoder.embeddings.mask_token is None
    io = load_file(str(case_dir / "io.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(result.model.encode(io["pixel_values"]).latents, io["latents"], **TOL)


def test_conversion_keeps_only_the_auxiliary_decoders_present(parity_root, tmp_path):
    case_dir = _case(parity_root, with_aux=True)
    state = load_file(str(case_dir / "original" / "model.safetensors"))
    removed = ("decoder_dino", "post_quant_conv_dino", "to_pixel_dino", "decoder_clip", "post_quant_conv_clip",
               "to_pixel_clip")
    kept = {k: v for k, v in state.items() if not k.startswith(removed)}
    save_file(kept, str(tmp_path / "hog_only.safetensors"))
    result = convert_maetok(tmp_path / "hog_only.safetensors", config_file=case_dir / "original" / "config.json",
                            presets_file=case_dir / "presets.json")
    model = result.model
    assert model.config.use_hog_decoder and not model.config.use_dino_decoder and not model.config.use_siglip_decoder
    assert model.dino_decoder is None and model.config.hog_cell_size == 4  # 108 values on 8-px patches
    io = load_file(str(case_dir / "io.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(model.decode_features(io["latents"], "hog"), io["aux_hog"], **TOL)
        torch.testing.assert_close(model(io["pixel_values"]).reconstruction, io["reconstruction"], **TOL)


# ----- latents, shapes, variants -----


def test_released_variants_shapes_on_meta():
    for name, size in (("maetok-b-128", 256), ("maetok-b-128-512", 512)):
        config = MAETokConfig.from_variant(name)
        with torch.device("meta"):
            model = MAETokModel(config).eval()
            latents = model.encode(torch.empty(1, 3, size, size)).latents
            reconstruction = model.decode(latents).reconstruction
        assert tuple(latents.shape) == (1, 128, 32) and tuple(reconstruction.shape) == (1, 3, size, size)
        assert model.encoder.embeddings.position_embedding.shape[1] == 1 + (size // 16) ** 2
    with pytest.raises(ValueError, match="unknown MAETok variant"):
        MAETokConfig.from_variant("maetok-b-64")


def test_latent_normalisation_round_trip():
    model = tiny_model(vq_mean=0.2, vq_std=0.4)
    latents = torch.randn(2, 8, 8)
    torch.testing.assert_close(model.normalize_latents(latents), (latents - 0.2) / 0.4)
    torch.testing.assert_close(model.denormalize_latents(model.normalize_latents(latents)), latents)
    with torch.no_grad():
        direct = model.decode(latents).reconstruction
        normalized = model.decode(model.normalize_latents(latents), denormalize=True).reconstruction
    torch.testing.assert_close(normalized, direct, atol=1e-5, rtol=1e-5)
    with pytest.raises(StrictDataclassClassValidationError, match="vq_std must be positive"):
        MAETokConfig(**TINY, vq_std=0.0)


def test_bad_latents_and_masks_raise():
    model = tiny_model()
    with pytest.raises(ValueError, match="8 channels in their last dimension, got 5"):
        model.decode(torch.zeros(1, 8, 5))
    with pytest.raises(ValueError, match=r"mask must be a tensor of shape \[2, 16\], got \(2, 15\)"):
        model.encode(pixels(), mask=torch.zeros(2, 15, dtype=torch.bool))
    with pytest.raises(ValueError, match="no dino decoder"):
        model.decode_features(torch.zeros(1, 8, 8), "dino")
    with pytest.raises(ValueError, match="target must be one of"):
        model.decode_features(torch.zeros(1, 8, 8), "pixels")
    no_mask = tiny_model(mask_ratio_min=0.0, mask_ratio_max=0.0)
    assert no_mask.encoder.embeddings.mask_token is None
    with pytest.raises(ValueError, match="no mask token"):
        no_mask.encode(pixels(), mask=torch.ones(2, 16, dtype=torch.bool))
    with pytest.raises(StrictDataclassClassValidationError, match="mask ratios"):
        MAETokConfig(**TINY, mask_ratio_min=0.7, mask_ratio_max=0.6)


# ----- mask modelling -----


def test_masked_patches_are_replaced_by_the_mask_token():
    model = tiny_model()
    images = pixels(1)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, [0, 5, 10]] = True
    with torch.no_grad():
        unmasked = model.encode(images).latents
        assert torch.equal(model.encode(images, mask=torch.zeros_like(mask)).latents, unmasked)
        masked = model.encode(images, mask=mask)
        assert torch.equal(masked.mask, mask)
        assert not torch.allclose(masked.latents, unmasked)
        # whatever the pixels of a masked patch (patch 5 = row 0, column 5 of 8-px patches on a 4x4 grid) are
        edited = images.clone()
        edited[:, :, 8:16, 8:16] = 0.9
        torch.testing.assert_close(model.encode(edited, mask=mask).latents, masked.latents, atol=1e-6, rtol=1e-6)
        assert not torch.allclose(model.encode(edited).latents, unmasked)


def test_training_masks_40_to_60_percent_of_patches():
    model = tiny_model(image_size=64, patch_size=4, decoder_patch_size=4).train()
    num_patches = 256
    ratios = []
    for seed in range(40):
        torch.manual_seed(seed)
        mask = model.random_patch_mask(3)
        counts = mask.sum(dim=1)
        assert mask.dtype == torch.bool and torch.all(counts == counts[0])
        assert len({tuple(row.nonzero().flatten().tolist()) for row in mask}) == 3  # independent per image
        ratios.append(counts[0].item() / num_patches)
    assert min(ratios) >= 0.4 and max(ratios) <= math.ceil(0.6 * num_patches) / num_patches
    # a normal truncated to [0.4, 0.6] and peaked at 0.6 has mean ~0.52
    assert 0.49 < float(np.mean(ratios)) < 0.56
    torch.manual_seed(0)
    assert model.encode(pixels(2, 64)).mask is not None
    assert model.eval().encode(pixels(2, 64)).mask is None


def test_hog_features_match_the_original_generator():
    """Golden values computed with the original `utils/hog.py` (MaskFeat HOG) on the same deterministic image."""
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    image = torch.stack([torch.sin(xx * yy / 37), torch.cos((xx + 2 * yy) / 5) * torch.sin(xx / 3),
                         torch.tanh((xx - yy) / 9)])[None]
    image = F.interpolate(image, size=256)
    hog = HOGFeatures(9, 8, 16)
    cells = hog.cell_histograms(image)
    expected_cell = [
        0.63717508, 0.59753370, 0.16054621, 0.01329446, 0.45935768, 0.0, 0.0, 0.0, 0.0,
        0.79354125, 0.48634529, 0.07809292, 0.0, 0.35660529, 0.0, 0.0, 0.0, 0.02224110,
        0.50119925, 0.0, 0.0, 0.0, 0.50503337, 0.0, 0.70266682, 0.0, 0.0,
    ]
    torch.testing.assert_close(cells[0, :, :, 5, 7].flatten(), torch.tensor(expected_cell), **TOL)
    expected_other = [0.87404341, 0.41050237, 0.0, 0.0, 0.25745258, 0.0, 0.0, 0.02407675, 0.02596877]
    torch.testing.assert_close(cells[0, 1, :, 20, 3], torch.tensor(expected_other), **TOL)
    assert abs(cells.sum().item() - 5123.4502) < 5e-3
    # per 16-px patch: 2x2 cells, laid out (channel, bin, cell row, cell column)
    features = hog(image, 16)
    assert features.shape == (1, 256, 108)
    row, col = 9, 4
    patch_cells = cells[0, :, :, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2]
    torch.testing.assert_close(features[0, row * 16 + col], patch_cells.flatten())
    with pytest.raises(ValueError, match="multiple of the HOG cell size"):
        hog(image, 12)


def test_auxiliary_losses_follow_their_definitions():
    model = tiny_model(use_hog_decoder=True, use_dino_decoder=True, use_siglip_decoder=True).train()
    images = pixels(2)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :7], mask[1, 3:12] = True, True
    generator = torch.Generator().manual_seed(1)
    dino = torch.randn(2, 16, 12, generator=generator)
    siglip = torch.randn(2, 16, 10, generator=generator)
    output = model(images, labels=images, mask=mask, dino_targets=dino, siglip_targets=siglip)
    with torch.no_grad():
        latents = model.encode(images, mask=mask).latents
        weights = mask.float()
        hog_error = (model.decode_features(latents, "hog") - HOGFeatures(9, 4, 16)(images, 8)).pow(2).mean(-1)
        expected_hog = (hog_error * weights).sum() / weights.sum()
        cosine = F.cosine_similarity(model.decode_features(latents, "dino"), dino, dim=-1)
        expected_dino = -(cosine * weights).sum() / weights.sum()
        cosine = F.cosine_similarity(model.decode_features(latents, "siglip"), siglip, dim=-1)
        expected_siglip = -(cosine * weights).sum() / weights.sum()
        reconstruction = F.mse_loss(model.decode(latents).reconstruction, images)
    torch.testing.assert_close(output.hog_loss, expected_hog, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output.dino_loss, expected_dino, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output.siglip_loss, expected_siglip, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output.reconstruction_loss, reconstruction, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output.loss, reconstruction + expected_hog + expected_dino + expected_siglip,
                               atol=1e-5, rtol=1e-5)
    # all patches when aux_loss_on_masked_only is off
    model.config.aux_loss_on_masked_only = False
    output = model(images, labels=images, mask=mask, dino_targets=dino, siglip_targets=siglip)
    torch.testing.assert_close(output.hog_loss, hog_error.mean(), atol=1e-5, rtol=1e-5)
    # no auxiliary losses in eval mode; targets are required in training
    assert model.eval()(images, labels=images).dino_loss is None
    model.train()
    with pytest.raises(ValueError, match=r"dino_targets.*set_feature_teachers"):
        model(images, labels=images)
    with pytest.raises(ValueError, match=r"dino_targets must have shape \[2, 16, 12\], got \(2, 16, 11\)"):
        model(images, labels=images, dino_targets=dino[..., :11], siglip_targets=siglip)


def test_auxiliary_geometry_errors_are_explicit():
    images = pixels(2)
    model = tiny_model(use_hog_decoder=True, hog_cell_size=8).train()
    with pytest.raises(ValueError, match="predicts 108 values per 8-px patch .* 8-px cells gives 27"):
        model(images, labels=images)
    assert model(images, labels=images, hog_targets=torch.zeros(2, 16, 108)).hog_loss is not None
    # DINOv2 features on a coarser grid than the encoder mask
    model = tiny_model(use_dino_decoder=True, aux_feature_patch_size=16).train()
    targets = torch.randn(2, 4, 12)
    with pytest.raises(ValueError, match=r"dino decoder grid \(4 patches\) to match the encoder mask \(16"):
        model(images, labels=images, dino_targets=targets)
    model.config.aux_loss_on_masked_only = False
    assert torch.isfinite(model(images, labels=images, dino_targets=targets).dino_loss)


def test_teachers_compute_dino_and_siglip_targets():
    from transformers import Dinov2Config, Dinov2Model, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    dino = Dinov2Model(Dinov2Config(hidden_size=12, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                                    patch_size=2, image_size=8)).eval()
    siglip = SiglipVisionModel(SiglipVisionConfig(hidden_size=10, num_hidden_layers=1, num_attention_heads=2,
                                                  intermediate_size=16, patch_size=2, image_size=8)).eval()
    model = tiny_model(use_dino_decoder=True, use_siglip_decoder=True).train()
    model.set_feature_teachers(dino_model=dino, siglip_model=siglip)
    assert not any(k.startswith("_feature") or "embeddings.patch_embeddings" in k for k in model.state_dict())
    images = pixels(2)
    mask = torch.rand(2, 16, generator=torch.Generator().manual_seed(2)) < 0.5
    output = model(images, labels=images, mask=mask)
    # the teachers see the image in [0, 1] at grid x patch = 8 px, ImageNet-normalised
    teacher_input = F.interpolate(images * 0.5 + 0.5, size=(8, 8), mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    teacher_input = (teacher_input - mean) / std
    with torch.no_grad():
        dino_targets = dino(pixel_values=teacher_input).last_hidden_state[:, 1:]
        siglip_targets = siglip(pixel_values=teacher_input).last_hidden_state
    expected = model(images, labels=images, mask=mask, dino_targets=dino_targets, siglip_targets=siglip_targets)
    torch.testing.assert_close(output.dino_loss, expected.dino_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output.siglip_loss, expected.siglip_loss, atol=1e-5, rtol=1e-5)
    output.loss.backward()
    assert all(p.grad is None for p in dino.parameters())
    assert model.dino_decoder.head.proj.weight.grad.abs().sum() > 0


def test_decoder_only_fine_tuning(tmp_path):
    model = tiny_model(use_hog_decoder=True)
    model.freeze_encoder()
    assert model.config.train_decoder_only
    assert not any(p.requires_grad for p in model.encoder.parameters()) and not model.quant_proj.weight.requires_grad
    model.train()
    images = pixels(2)
    output = model(images, labels=images)
    assert output.mask is None and output.hog_loss is None
    torch.testing.assert_close(output.loss, output.reconstruction_loss)
    output.loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.decoder.layers[0].self_attn.q_proj.weight.grad is not None
    # the stage is part of the saved config
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert reloaded.config.train_decoder_only
    assert not any(p.requires_grad for p in reloaded.encoder.parameters())
    reloaded.unfreeze_encoder()
    assert all(p.requires_grad for p in reloaded.encoder.parameters())


def test_trainer_with_lora_on_the_decoder(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    model = tiny_model(use_hog_decoder=True)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc1"]))
    images = pixels(8, seed=4)
    dataset = [{"pixel_values": image, "labels": image} for image in images]
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, learning_rate=5e-3, report_to=[],
        save_strategy="no", logging_steps=1, use_cpu=True, dataloader_num_workers=0, seed=0,
    )
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_B" in n}
    trainer = Trainer(model=peft_model, args=args, train_dataset=dataset)
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    changed = [n for n, p in peft_model.named_parameters() if "lora_B" in n and not torch.equal(p, before[n])]
    assert any("hog_decoder" in n for n in changed) and any("encoder.layers" in n for n in changed)


# ----- image processors -----


def test_pil_processor_reproduces_adm_center_crop():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (600, 1000, 3), dtype=np.uint8))
    processor = MAETokImageProcessorPil(size={"shortest_edge": 128}, crop_size={"height": 128, "width": 128})
    values = processor(image, return_tensors="pt")["pixel_values"]
    # ADM by hand: 1000x600 -> BOX 500x300 -> BOX 250x150 -> BICUBIC round(250 * 128 / 150) = 213 x 128
    reference = image.resize((500, 300), Image.BOX).resize((250, 150), Image.BOX).resize((213, 128), Image.BICUBIC)
    array = np.asarray(reference)[:, (213 - 128) // 2 : (213 - 128) // 2 + 128]
    expected = torch.from_numpy(array.astype(np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
    torch.testing.assert_close(values, expected, atol=1e-6, rtol=0)
    assert adm_resize(image, 128).size == (213, 128)
    # the torchvision backend is a close single-step approximation
    fast = MAETokImageProcessor(size={"shortest_edge": 128}, crop_size={"height": 128, "width": 128})
    assert (fast(image, return_tensors="pt")["pixel_values"] - values).abs().mean() < 0.05
    restored = processor.postprocess(values, output_type="np")[0]
    np.testing.assert_array_equal(restored, array)
