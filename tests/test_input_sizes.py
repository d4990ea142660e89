"""Input sizes: every size the original code accepts is accepted with the original's result, every size it cannot
handle raises a ValueError. Expected values are built by hand from the original checkpoints' tables (cropped or
applied in raster order as the original code does) and the model's layers, never from the code paths under test.

Audit (also in the model cards):
* FlexTok crops its position tables to the VAE latent ("absolute" posemb scaling), so it takes any image whose
  latent sides are multiples of the patch size and at most the table; its decoder samples any such latent size.
* TiTok adds its [1 + g*g, W] table to the flattened patch sequence: any H x W with (H // p) * (W // p) == g*g works
  (the stride-p conv drops remainder pixels); the output is always the configured g*p square.
* MAETok builds its timm ViT with a strict patch embedding: only the configured square size (nothing to widen).
"""

import pytest
import torch
from safetensors.torch import load_file
from testers.flextok import TINY_FLEXTOK

from vistok import FlexTokConfig, FlexTokModel, MAETokModel, TiTokModel
from vistok.conversion.__main__ import main as convert_main


ATOL = RTOL = 1e-4


# ----------------------------------------------------------------------------------------------------------- FlexTok


@pytest.fixture(scope="module")
def flextok_case(parity_root, tmp_path_factory):
    """(converted model, original state dict) for the first FlexTok fixture case."""
    case = sorted(p for p in (parity_root / "flextok").iterdir() if p.is_dir())[0]
    dest = tmp_path_factory.mktemp("flextok-sizes") / case.name
    assert convert_main(["flextok", str(case / "original"), str(dest)]) == 0
    model = FlexTokModel.from_pretrained(dest).eval()
    return model, load_file(case / "original" / "model.safetensors")


def _original_table(state_dict, suffix, grid_h, grid_w):
    """The original's [1, D, n, n] sin-cos table cropped to the top-left grid_h x grid_w corner, as [grid_h*grid_w, D]
    in raster order (what the original's "absolute" posemb scaling adds to a grid_h x grid_w patch grid)."""
    (table,) = [v for k, v in state_dict.items() if k.endswith(suffix)]
    return table[0, :, :grid_h, :grid_w].flatten(1).T


def _patches(latents, p):
    # the original patchifies channels-last: b (n0 p0) (n1 p1) c -> b (n0 n1) (p0 p1 c)
    b, c, h, w = latents.shape
    x = latents.permute(0, 2, 3, 1).reshape(b, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def _encoder_by_hand(model, state_dict, vae_latents):
    """Runs the encoder with the hand-cropped original table and a hand-written register mask."""
    enc, p = model.encoder, model.config.patch_size
    gh, gw = vae_latents.shape[-2] // p, vae_latents.shape[-1] // p
    table = _original_table(state_dict, "enc_posemb_module.posembs", gh, gw)
    patches = enc.embeddings.patch_embedding(_patches(vae_latents, p)) + table
    n = model.config.num_latent_tokens
    registers = enc.embeddings.register_tokens.expand(len(patches), -1, -1)
    x = torch.cat([patches, registers], 1)
    num_patches = gh * gw
    mask = torch.zeros(num_patches + n, num_patches + n, dtype=torch.bool)
    mask[:, :num_patches] = True  # everyone sees every patch
    mask[num_patches:, num_patches:] = torch.ones(n, n).tril().bool()  # registers: causal among themselves
    for layer in enc.layers:
        x = layer(x, mask[None, None])
    return enc.latent_projection(enc.norm(x[:, num_patches:]))


@pytest.mark.parametrize("size", [(24, 16), (16, 32), (8, 8), (27, 18), (35, 33)])
def test_flextok_encodes_every_size_the_original_accepts(flextok_case, size):
    model, state_dict = flextok_case
    factor, p = model.config.vae_downsample_factor, model.config.patch_size
    pixel_values = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(sum(size))) * 2 - 1
    with torch.no_grad():
        encoded = model.encode(pixel_values)
        # the diffusers VAE halves each side rounding down per downsampling block (odd sizes included)
        expected_latent = [side for side in size]
        for _ in range(factor.bit_length() - 1):
            expected_latent = [side // 2 for side in expected_latent]
        assert list(encoded.vae_latents.shape[-2:]) == expected_latent
        assert tuple(model.vae_latent_size(*size)) == tuple(expected_latent)
        expected = _encoder_by_hand(model, state_dict, encoded.vae_latents)
    torch.testing.assert_close(encoded.encoder_output, expected, atol=ATOL, rtol=RTOL)
    assert encoded.tokens.shape == (2, model.config.num_latent_tokens)
    assert expected_latent[0] % p == 0 and expected_latent[1] % p == 0


def test_flextok_decodes_to_a_requested_non_square_size(flextok_case):
    """One Euler step without guidance: x0 = noise - v(noise, t=1); reconstruction = VAE(x0 / scale); the velocity is
    recomputed by hand with the original's decoder table cropped to the 3x2 patch grid."""
    model, state_dict = flextok_case
    config, dec = model.config, model.decoder
    tokens = torch.tensor([[5, 17, 300, 999, 0, 42, 7, 600], [1, 2, 3, 4, 5, 6, 7, 8]])[:, : config.num_latent_tokens]
    tokens = tokens % config.codebook_size
    factor, p = config.vae_downsample_factor, config.patch_size
    size = (3 * p * factor, 2 * p * factor)
    noise = torch.randn(2, config.vae_latent_channels, 3 * p, 2 * p, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model.decode(tokens[:, :5], noise=noise, num_steps=1, guidance_scale=1.0, image_size=size)
        codes = model.tokens_to_latents(tokens[:, :5])
        registers = dec.embeddings.embed_registers(codes, torch.tensor([5, 5]))
        table = _original_table(state_dict, "dec_patches_posemb_module.posembs", 3, 2)
        x = torch.cat([dec.embeddings.patch_embedding(_patches(noise, p)) + table, registers], 1)
        temb = dec.time_embedding(torch.ones(2))
        for layer in dec.layers:
            x = layer(x, temb, 6)
        patch_out = dec.head(x[:, :6], temb)  # [B, 6, p*p*C] in (p0 p1 c) order
        velocity = patch_out.reshape(2, 3, 2, p, p, -1).permute(0, 5, 1, 3, 2, 4).reshape(noise.shape)
        sample = noise - velocity
        expected = model.vae.decode(sample / config.vae_scaling_factor).sample
    assert out.reconstruction.shape == (2, 3, *size)
    torch.testing.assert_close(out.vae_latents, sample, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(out.reconstruction, expected, atol=ATOL, rtol=RTOL)
    # the size follows explicit noise when image_size is not given
    with torch.no_grad():
        again = model.decode(tokens[:, :5], noise=noise, num_steps=1, guidance_scale=1.0).reconstruction
    torch.testing.assert_close(again, out.reconstruction, atol=0, rtol=0)


def test_flextok_forward_decodes_to_the_encoded_latent_size():
    model = FlexTokModel(FlexTokConfig(**TINY_FLEXTOK)).eval()
    pixel_values = torch.rand(1, 3, 27, 18) * 2 - 1  # f4 VAE: latent 6x4 -> output 24x16
    with torch.no_grad():
        out = model(pixel_values, generator=torch.Generator().manual_seed(0), num_steps=1)
        dec = model.decode(out.tokens, image_size=(24, 16), generator=torch.Generator().manual_seed(0), num_steps=1)
    assert out.reconstruction.shape == (1, 3, 24, 16)
    torch.testing.assert_close(out.reconstruction, dec.reconstruction, atol=0, rtol=0)


@pytest.mark.parametrize(
    "size, message",
    [
        ((40, 32), "at most 8"),  # 5 patches per side: beyond the 4x4 position table
        ((32, 44), "at most 8"),
        ((28, 32), "multiples of the patch size 2"),  # latent 7: not a multiple of the patch size
        ((4, 32), "multiples of the patch size 2"),  # latent side 1
        ((1, 1), "multiples of the patch size 2"),
    ],
)
def test_flextok_rejects_what_the_original_cannot_encode(size, message):
    model = FlexTokModel(FlexTokConfig(**TINY_FLEXTOK)).eval()
    with pytest.raises(ValueError, match=message):
        model.encode(torch.zeros(1, 3, *size))


@pytest.mark.parametrize(
    "image_size, message",
    [((40, 32), "at most 8"), ((20, 16), "multiples of the patch size"), ((30, 16), "not a multiple of the VAE"),
     ((0, 16), "positive ints"), ((16, 16, 16), "positive ints")],
)
def test_flextok_decode_rejects_sizes_the_original_cannot_sample(image_size, message):
    model = FlexTokModel(FlexTokConfig(**TINY_FLEXTOK)).eval()
    with pytest.raises(ValueError, match=message):
        model.decode(torch.zeros(1, 4, dtype=torch.long), image_size=image_size, num_steps=1)
    with pytest.raises(ValueError, match="noise must be a tensor of shape"):
        model.decode(torch.zeros(1, 4, dtype=torch.long), image_size=(16, 16), noise=torch.zeros(1, 4, 8, 8))


# ------------------------------------------------------------------------------------------------------------- TiTok


def _titok(parity_root, tmp_path, case):
    case_dir = parity_root / "titok" / case
    args = ["titok", str(case_dir / "original"), str(tmp_path / case)]
    if (case_dir / "presets.json").is_file():
        args += ["--preset-overrides", str(case_dir / "presets.json")]
    assert convert_main(args) == 0
    return TiTokModel.from_pretrained(tmp_path / case).eval(), load_file(case_dir / "io.safetensors")


def _raster_regrid(pixel_values, patch, rows, cols):
    """Re-lays the patches of an image, in raster order, onto a rows x cols patch grid: the original flattens the
    patch grid before adding its table, so both images give the same token sequence."""
    batch, channels, height, width = pixel_values.shape
    patches = pixel_values.reshape(batch, channels, height // patch, patch, width // patch, patch)
    patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, rows, cols, channels, patch, patch)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, rows * patch, cols * patch)


def test_titok_encodes_every_size_the_original_accepts(parity_root, tmp_path):
    model, io = _titok(parity_root, tmp_path, "vq_direct")
    pixel_values, patch = io["pixel_values"], model.config.patch_size
    grid = model.config.image_size // patch
    expected = io["encoder_output"].squeeze(2).transpose(1, 2)  # the original's output on the square image
    extra = torch.rand(2, 3, 32 + patch - 1, 32 + patch - 2, generator=torch.Generator().manual_seed(0))
    extra[..., :32, :32] = pixel_values
    # (1) odd, non-square sizes the stride-p conv crops back to g*p (the original ignores the remainder pixels)
    # (2) other grids of g*g patches (the table is added in raster order): the same sequence of patches
    inputs = [extra, extra[..., : 32 + 3, :32], _raster_regrid(pixel_values, patch, grid // 2, grid * 2)]
    inputs.append(_raster_regrid(pixel_values, patch, grid * 2, grid // 2))
    with torch.no_grad():
        for image in inputs:
            encoded = model.encode(image)
            torch.testing.assert_close(encoded.encoder_output, expected, atol=ATOL, rtol=RTOL)
            assert torch.equal(encoded.tokens, io["codes"].squeeze(1))
            assert model.decode(encoded.tokens).reconstruction.shape == (2, 3, 32, 32)
        odd = model(extra)
    torch.testing.assert_close(odd.reconstruction, io["reconstruction"], atol=ATOL, rtol=RTOL)


def test_titok_rejects_patch_counts_the_table_cannot_take(parity_root, tmp_path):
    model, _ = _titok(parity_root, tmp_path, "vq_direct")
    for size in [(40, 32), (31, 32), (32, 31), (8, 8), (64, 64)]:
        with pytest.raises(ValueError, match="position table holds exactly 16"):
            model.encode(torch.rand(1, 3, *size))


def test_tatitok_broadcasts_a_single_text_state_like_the_original(parity_root, tmp_path):
    model, io = _titok(parity_root, tmp_path, "tatitok_vq")
    tokens, text = io["codes"].squeeze(1), io["text_guidance"]
    single = text[:, :1]
    with torch.no_grad():
        # proj(t) + table broadcasts [B, 1, W] over the [T, W] table: the same as repeating the state T times
        out = model.decode(tokens, text_guidance=single).reconstruction
        expected = model.decode(tokens, text_guidance=single.expand(-1, text.shape[1], -1)).reconstruction
        full = model.decode(tokens, text_guidance=text).reconstruction
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(full, io["reconstruction"], atol=ATOL, rtol=RTOL)
    for bad in (text[:, :3], text[:1], text[..., :5]):
        with pytest.raises(ValueError, match="text_guidance must have shape"):
            model.decode(tokens, text_guidance=bad)


# ------------------------------------------------------------------------------------------------------------ MAETok


def test_maetok_accepts_only_the_configured_size_like_the_original(parity_root, tmp_path):
    """The original's timm ViT patch embedding is strict (`dynamic_img_size=False`): it asserts the configured size."""
    case_dir = parity_root / "maetok" / "ae"
    args = ["maetok", str(case_dir / "original"), str(tmp_path / "ae"), "--preset-overrides"]
    assert convert_main(args + [str(case_dir / "presets.json")]) == 0
    model = MAETokModel.from_pretrained(tmp_path / "ae").eval()
    for size in [(40, 32), (32, 40), (33, 32), (16, 16), (24, 40)]:
        with pytest.raises(ValueError, match="pixel_values must be 32x32"):
            model.encode(torch.rand(1, 3, *size) * 2 - 1)
    io = load_file(case_dir / "io.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(model.encode(io["pixel_values"]).latents, io["latents"], atol=ATOL, rtol=RTOL)
