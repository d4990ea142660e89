"""Emu3 vision tokenizer: parity with the original code through `vistok-convert emu3-vq` + the Auto classes, the video
path against transformers' module-level `Emu3VQVAE` (no crop), frame counts that are not multiples of 4, the
once-per-frame image path, mixed-size image batches, and the image/video processors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel, AutoVideoProcessor, Emu3VQVAE, Emu3VQVAEConfig

import vistok
from vistok.conversion.__main__ import main as convert_main
from vistok.conversion.utils import ConversionError
from vistok.modeling.modeling_emu3 import Emu3VisionTokenizer
from vistok.processing.image_processing_emu3 import emu3_smart_resize
from vistok.processing.video_processing_emu3 import Emu3VideoProcessor


ATOL = RTOL = 1e-4
TINY = dict(
    codebook_size=64, embed_dim=4, latent_channels=4, base_channels=32, channel_multiplier=[1, 2],
    num_res_blocks=1, attn_resolutions=[1], hidden_size=64,
)


def _cases(parity_root):
    root = parity_root / "emu3_vq"
    cases = sorted(p for p in root.iterdir() if (p / "original").is_dir()) if root.is_dir() else []
    if not cases:
        pytest.skip(f"no Emu3 parity cases under {root}")
    return cases


def _single_attention_width(config) -> bool:
    """Whether every attention block is `hidden_size` wide, the only layout transformers' Emu3VQVAE builds."""
    levels = [i for i in config.attn_resolutions if i < len(config.channel_multiplier)] + [-1]
    return all(config.base_channels * config.channel_multiplier[i] == config.hidden_size for i in levels)


def _reference_codes(reference: Emu3VQVAE, pixel_values: torch.Tensor) -> torch.Tensor:
    """transformers' module-level video encode (encoder -> quant_conv -> argmin) without its per-image crop."""
    hidden = reference.encoder(pixel_values)
    prequant = reference.quant_conv(hidden.permute(0, 2, 1, 3, 4)).permute(0, 2, 1, 3, 4)
    return reference.quantize(prequant)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = Emu3VisionTokenizer(Emu3VQVAEConfig(**TINY)).eval()
    with torch.no_grad():  # non-trivial BatchNorm3d statistics, so the temporal layers matter
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    reference = Emu3VQVAE(model.config).eval()
    assert not reference.load_state_dict(model.state_dict(), strict=True).missing_keys
    return model, reference


# ------------------------------------------------------------------------------------------------ parity
def test_parity_every_case(parity_root, tmp_path):
    for case_dir in _cases(parity_root):
        dest = tmp_path / case_dir.name
        assert convert_main(["emu3-vq", str(case_dir / "original"), str(dest)]) == 0, case_dir.name
        io = load_file(case_dir / "io.safetensors")
        model, info = AutoModel.from_pretrained(dest, output_loading_info=True)
        assert isinstance(model, vistok.Emu3VisionTokenizer) and not any(info.values()), (case_dir.name, info)
        assert isinstance(AutoImageProcessor.from_pretrained(dest), vistok.Emu3VisionTokenizerImageProcessor)
        assert isinstance(AutoVideoProcessor.from_pretrained(dest), Emu3VideoProcessor)
        if _single_attention_width(model.config):  # else transformers' Emu3VQVAE cannot build it
            # the written weights are transformers' own Emu3VQVAE layout
            _, reference_info = Emu3VQVAE.from_pretrained(dest, output_loading_info=True)
            assert not any(reference_info.values()), reference_info
        kinds = [k for k in ("image", "video") if f"pixel_values_{k}" in io]
        assert kinds, f"{case_dir.name}: no pixel_values_* in io.safetensors"
        model.eval()
        with torch.no_grad():
            for kind in kinds:
                encoded = model.encode(io[f"pixel_values_{kind}"])
                assert torch.equal(encoded.tokens, io[f"codes_{kind}"]), (case_dir.name, kind)
                if f"prequant_{kind}" in io:
                    expected = io[f"prequant_{kind}"]
                    expected = expected[:, 0] if kind == "image" else expected
                    torch.testing.assert_close(encoded.encoder_output, expected, atol=ATOL, rtol=RTOL)
                reconstruction = model.decode(io[f"codes_{kind}"]).reconstruction
                torch.testing.assert_close(reconstruction, io[f"recon_{kind}"], atol=ATOL, rtol=RTOL)
                # decoding the codebook vectors is decoding the ids
                torch.testing.assert_close(model.decode(encoded.latents).reconstruction, reconstruction)


def test_conversion_rejects_bad_sources(parity_root, tmp_path, capsys):
    from safetensors.torch import save_file

    case_dir = _cases(parity_root)[0]
    state = load_file(case_dir / "original" / "model.safetensors")
    source = tmp_path / "src"
    source.mkdir()
    (source / "config.json").write_text((case_dir / "original" / "config.json").read_text())
    save_file({k: v for k, v in state.items() if k != "decoder.conv_out.bias"}, source / "model.safetensors")
    assert convert_main(["emu3-vq", str(source), str(tmp_path / "out1")]) == 2
    assert "decoder.conv_out.bias" in capsys.readouterr().err
    save_file(state | {"extra.weight": torch.zeros(1)}, source / "model.safetensors")
    assert convert_main(["emu3-vq", str(source), str(tmp_path / "out2")]) == 2
    assert "extra.weight" in capsys.readouterr().err
    config = json.loads((case_dir / "original" / "config.json").read_text())
    (source / "config.json").write_text(json.dumps(config | {"codebook_size": config["codebook_size"] * 2}))
    save_file(state, source / "model.safetensors")
    with pytest.raises(ConversionError, match="codebook_size"):
        vistok.conversion.__main__.convert("emu3-vq", str(source), str(tmp_path / "out3"))


# ------------------------------------------------------------------------------------------------ video path
@pytest.mark.parametrize("shape", [(1, 8, 16, 32), (2, 12, 24, 8), (1, 20, 8, 12)], ids=["wide", "tall", "long"])
def test_video_codes_match_transformers_modules_without_crop(tiny, shape):
    model, reference = tiny
    batch, frames, height, width = shape
    video = torch.rand(batch, frames, 3, height, width, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        encoded = model.encode(video)
        expected = _reference_codes(reference, video)
        assert encoded.tokens.shape == (batch, frames // 4, height // 2, width // 2)
        assert torch.equal(encoded.tokens, expected)
        reconstruction = model.decode(encoded.tokens).reconstruction
        assert reconstruction.shape == video.shape
        torch.testing.assert_close(reconstruction, reference.decode(encoded.tokens), atol=ATOL, rtol=RTOL)
        # transformers 5.24's `encode` crops video codes to [H/s, W/s] on the (t, h) axes: rows are lost when W < H,
        # latent frames when t > H/s
        cropped = reference.encode(video, image_sizes=[[height, width]] * batch).image_tokens[0]
    assert torch.equal(cropped, expected[0][: height // 2, : width // 2])
    loses_data = width < height or frames // 4 > height // 2
    assert (tuple(cropped.shape) != tuple(encoded.tokens.shape[1:])) == loses_data


@pytest.mark.parametrize("frames", [5, 6, 7, 9])
def test_frame_counts_not_multiple_of_four_follow_the_original(tiny, frames):
    model, reference = tiny
    video = torch.rand(1, frames, 3, 8, 12, generator=torch.Generator().manual_seed(frames)) * 2 - 1
    with torch.no_grad():
        tokens = model.encode(video).tokens
        # the causal strided temporal convs of the original never read the last T % 4 frames
        assert torch.equal(tokens, _reference_codes(reference, video))
        assert torch.equal(tokens, model.encode(video[:, : frames - frames % 4]).tokens)
        assert model.decode(tokens).reconstruction.shape[1] == frames - frames % 4


def test_chunked_video_matches_encoding_each_chunk(tiny):
    model, _ = tiny
    video = torch.rand(1, 8, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        chunked = model.encode(video, chunk_frames=True).tokens
        separate = torch.cat([model.encode(video[:, :4]).tokens, model.encode(video[:, 4:]).tokens], dim=1)
        assert torch.equal(chunked, separate)
        whole = model.decode(chunked).reconstruction
        per_chunk = model.decode(chunked, chunk_frames=True).reconstruction
        expected = torch.cat([model.decode(chunked[:, :1]).reconstruction, model.decode(chunked[:, 1:]).reconstruction], 1)
    torch.testing.assert_close(per_chunk, expected, atol=ATOL, rtol=RTOL)
    assert not torch.allclose(whole, per_chunk, atol=1e-3)  # the causal temporal layers do mix latent frames


# ------------------------------------------------------------------------------------------------ image path
def test_image_path_runs_2d_networks_once_per_image(tiny):
    model, reference = tiny
    images = torch.rand(3, 3, 16, 24, generator=torch.Generator().manual_seed(3)) * 2 - 1
    batches = []
    hooks = [m.register_forward_hook(lambda mod, args, out: batches.append(args[0].shape[0]))
             for m in (model.encoder.conv_in, model.decoder.conv_out)]
    with torch.no_grad():
        encoded = model.encode(images)
        decoded = model.decode(encoded.tokens)
    for hook in hooks:
        hook.remove()
    assert batches == [3, 3]  # the original runs both on 4 x 3 frames
    with torch.no_grad():
        # transformers' Emu3VQVAE repeats the image 4 times and decodes 4 frames
        expected_codes = reference.encode(images, image_sizes=[[16, 24]] * 3).image_tokens
        assert torch.equal(encoded.tokens, torch.stack(expected_codes))
        torch.testing.assert_close(decoded.reconstruction, reference.decode(encoded.tokens), atol=ATOL, rtol=RTOL)


def test_images_of_different_sizes_are_encoded_at_their_own_size(tiny):
    model, _ = tiny
    generator = torch.Generator().manual_seed(4)
    images = [torch.rand(3, h, w, generator=generator) * 2 - 1 for h, w in ((8, 12), (16, 16), (8, 12))]
    with torch.no_grad():
        encoded = model.encode(images)
        singles = [model.encode(image[None]) for image in images]
        for tokens, single in zip(encoded.tokens, singles):
            assert torch.equal(tokens, single.tokens[0])
        padded = torch.zeros(3, 3, 16, 16)
        for i, image in enumerate(images):
            padded[i, :, : image.shape[1], : image.shape[2]] = image
        from_padded = model.encode(padded, image_sizes=torch.tensor([[8, 12], [16, 16], [8, 12]]))
        assert all(torch.equal(a, b) for a, b in zip(from_padded.tokens, encoded.tokens))
        decoded = model.decode(encoded.tokens).reconstruction
    assert [tuple(r.shape) for r in decoded] == [(3, 8, 12), (3, 16, 16), (3, 8, 12)]
    torch.testing.assert_close(decoded[1], model.decode(singles[1].tokens).reconstruction[0])


def test_bad_inputs_name_expected_and_got(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="at least 4 frames"):
        model.encode(torch.rand(1, 3, 3, 8, 8))
    with pytest.raises(ValueError, match="3 channels"):
        model.encode(torch.rand(1, 8, 4, 8, 8))
    with pytest.raises(ValueError, match="at least the spatial factor 2.*got 1x8"):
        model.encode(torch.rand(1, 3, 1, 8))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 64\)"):
        model.decode(torch.full((1, 1, 4, 4), 64))
    with pytest.raises(ValueError, match=r"\[batch, frames, height, width\]"):
        model.decode(torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="embed_dim=4"):
        model.decode(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"image_sizes must have shape \[2, 2\]"):
        model.encode(torch.rand(2, 3, 8, 8), image_sizes=[[8, 8]])


# ------------------------------------------------------------------------------------------------ processors
def test_smart_resize_hand_computed():
    assert emu3_smart_resize(1000, 700) == (1000, 704)  # rounded to multiples of 8, area inside the budget
    # 2000x1500 = 3.0e6 px > 1024^2: scale by sqrt(3e6 / 1048576) = 1.6914, floor to multiples of 8
    assert emu3_smart_resize(2000, 1500) == (1176, 880)
    # 100x200 < 512^2: scale by sqrt(262144 / 20000) = 3.6204, ceil to multiples of 8
    assert emu3_smart_resize(100, 200) == (368, 728)
    with pytest.raises(ValueError, match="aspect ratio must be at most 5"):
        emu3_smart_resize(100, 600)


def test_image_processor_pads_mixed_sizes_and_inverts(tmp_path):
    processor = vistok.Emu3VisionTokenizerImageProcessorPil(spatial_factor=4, min_pixels=16 * 16, max_pixels=48 * 48)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((20, 28), (32, 32))]
    out = processor(images, return_tensors="pt")
    assert out["pixel_values"].shape == (2, 3, 32, 32)
    assert out["image_sizes"].tolist() == [[20, 28], [32, 32]]
    assert (out["pixel_values"][0, :, 20:] == 0).all() and (out["pixel_values"][0, :, :, 28:] == 0).all()
    # sizes already on the grid are not resized, so postprocess inverts exactly
    restored = processor.postprocess(out["pixel_values"][1:], output_type="np")[0]
    np.testing.assert_array_equal(restored, np.asarray(images[1]))
    expected = (np.asarray(images[0]).astype(np.float32) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(out["pixel_values"][0, :, :20, :28].permute(1, 2, 0).numpy(), expected, atol=1e-6)


def _write_mp4(path, frames: np.ndarray, fps: int = 8):
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264rgb" if "libx264rgb" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "rgb24" if stream.codec_context.name == "libx264rgb" else "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_video_processor_decodes_samples_and_normalises(tmp_path):
    pytest.importorskip("av")
    processor = Emu3VideoProcessor(spatial_factor=4, min_pixels=16 * 16, max_pixels=48 * 48)
    frames = np.random.default_rng(1).integers(0, 256, (10, 24, 40, 3), dtype=np.uint8)
    out = processor([frames], return_tensors="pt")["pixel_values_videos"]
    # 24x40 is on the grid of 4 and inside [16^2, 48^2] -> no resize; [-1, 1] = x / 127.5 - 1
    assert out.shape == (1, 10, 3, 24, 40)
    torch.testing.assert_close(out[0], torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1)
    sampled = processor([frames], do_sample_frames=True, num_frames=6, return_tensors="pt")["pixel_values_videos"]
    assert sampled.shape[1] == 4  # rounded down to a multiple of the temporal factor
    path = tmp_path / "clip.mp4"
    _write_mp4(path, frames)
    decoded = processor(str(path), return_tensors="pt")["pixel_values_videos"]
    assert decoded.shape == (1, 10, 3, 24, 40)
    assert (decoded - out).abs().mean() < 0.1  # lossy codec
    assert processor.postprocess(out, output_type="np")[0].shape == (10, 24, 40, 3)
    large = Emu3VideoProcessor(spatial_factor=8)([frames], return_tensors="pt")["pixel_values_videos"]
    assert large.shape[-2:] == emu3_smart_resize(24, 40) == (400, 664)


def test_tiny_model_save_load_and_auto_video_processor(tiny, tmp_path):
    model, _ = tiny
    model.save_pretrained(tmp_path)
    Emu3VideoProcessor(spatial_factor=2).save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is Emu3VisionTokenizer and reloaded.config.model_type == "emu3_vqgan"
    assert AutoVideoProcessor.from_pretrained(tmp_path).spatial_factor == 2
    video = torch.rand(1, 4, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        assert torch.equal(reloaded.encode(video).tokens, model.encode(video).tokens)
    assert torch.equal(reloaded.quantize.embedding.weight, model.quantize.embedding.weight)


def test_chunked_argmin_gives_the_same_codes(tiny, monkeypatch):
    model, reference = tiny
    video = torch.rand(1, 4, 3, 16, 24, generator=torch.Generator().manual_seed(6)) * 2 - 1
    with torch.no_grad():
        whole = model.encode(video).tokens
        monkeypatch.setattr(model.quantize, "rows_per_chunk", 7)  # 96 rows in 14 chunks, the last one partial
        assert torch.equal(model.encode(video).tokens, whole)
        assert torch.equal(whole, _reference_codes(reference, video))


# ------------------------------------------------------------------------------------------------ generality
@pytest.mark.parametrize("size", [(9, 8), (7, 13), (2, 3)])
def test_sizes_off_the_grid_floor_like_the_original(tiny, size):
    """The original accepts any side >= the spatial factor: each stride-2 downsampling (pad right/bottom by 1, 3x3
    conv) maps n to floor(n / 2), so a 9x8 image gives a 4x4 grid (hand-computed: floor(9/2) = 4) and decodes to
    8x8. Reference: transformers' module-level encoder, which has the same padding."""
    model, reference = tiny
    height, width = size
    image = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(height * width)) * 2 - 1
    with torch.no_grad():
        tokens = model.encode(image).tokens
        assert tokens.shape == (2, height // 2, width // 2)
        assert torch.equal(tokens, _reference_codes(reference, image[:, None].expand(-1, 4, -1, -1, -1))[:, 0])
        assert model.decode(tokens).reconstruction.shape == (2, 3, height // 2 * 2, width // 2 * 2)
        video = torch.rand(1, 4, 3, height, width, generator=torch.Generator().manual_seed(7)) * 2 - 1
        assert torch.equal(model.encode(video).tokens, _reference_codes(reference, video))


def test_attention_at_a_narrower_level_keeps_its_width(tmp_path):
    """`attn_resolutions=[0]` with `channel_multiplier=[1, 2]`: the original builds the level-0 attention 32 wide
    (its level's channels) next to the 64-wide middle attention; transformers' Emu3VQVAE cannot (one hidden_size)."""
    config = Emu3VQVAEConfig(**{**TINY, "attn_resolutions": [0, 1]})
    model = Emu3VisionTokenizer(config).eval()
    widths = {
        name: module.weight.shape for name, module in model.named_modules() if name.endswith(("q_proj", "out_proj"))
    }
    assert widths["encoder.down_block.down.0.attn.0.q_proj"] == (32, 32)
    assert widths["decoder.up_block.up.0.attn.1.out_proj"] == (32, 32)
    assert widths["encoder.down_block.down.1.attn.0.q_proj"] == (64, 64)
    assert widths["encoder.middle_block.attn_1.q_proj"] == (64, 64)
    # the level-0 attention is a residual single-head attention over h*w with scale 32^-0.5 (written out)
    attention, norm = model.encoder.down_block.down[0].attn[0], model.encoder.down_block.down[0].attn_norms[0]
    x = torch.randn(1, 32, 3, 5)
    flat = norm(x).flatten(2).transpose(1, 2)
    q, k, v = attention.q_proj(flat), attention.k_proj(flat), attention.v_proj(flat)
    expected = attention.out_proj(torch.softmax(q @ k.transpose(1, 2) / 32**0.5, dim=-1) @ v)
    torch.testing.assert_close(attention(flat)[0], expected)
    model.save_pretrained(tmp_path)
    reloaded, info = Emu3VisionTokenizer.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info
    image = torch.rand(1, 3, 8, 12) * 2 - 1
    with torch.no_grad():
        assert torch.equal(reloaded.encode(image).tokens, model.encode(image).tokens)


@pytest.mark.parametrize("size", [(2, 2), (3, 2)])
def test_one_token_image_with_one_channel_per_norm_group(size):
    """A 1x1 latent on a config with one channel per GroupNorm group: the original runs four copies of the image
    together; torch refuses a GroupNorm call whose groups hold a single value, so vistok's one-frame path must still
    give transformers' codes and pixels (one image, and each image of a batch of different sizes)."""
    config = Emu3VQVAEConfig(**{**TINY, "channel_multiplier": [1, 1], "hidden_size": 32})
    torch.manual_seed(1)
    model = Emu3VisionTokenizer(config).eval()
    reference = Emu3VQVAE(config).eval()
    reference.load_state_dict(model.state_dict())
    image = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        tokens = model.encode(image).tokens
        assert tokens.shape == (1, 1, 1)
        assert torch.equal(tokens, _reference_codes(reference, image[:, None].expand(-1, 4, -1, -1, -1))[:, 0])
        torch.testing.assert_close(model.decode(tokens).reconstruction, reference.decode(tokens), atol=1e-5, rtol=0)
        larger = torch.rand(1, 3, 6, 4, generator=torch.Generator().manual_seed(6)) * 2 - 1
        ragged = model.encode([image[0], larger[0]]).tokens
        assert torch.equal(ragged[0], tokens[0]) and torch.equal(ragged[1], model.encode(larger).tokens[0])
