"""Image processors and the ``image-tokenization`` pipeline against independent references: the original
preprocessing written out with PIL / ``torchvision.transforms``, hand-computed sizes where rounding and flooring
differ, non-square and odd sizes, and hypothesis properties (batch == singles, ranges, postprocess inverts)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision import transforms
from transformers import pipeline

import vistok
from testers import all_testers


PROPERTY = settings(max_examples=15, deadline=None, derandomize=True, database=None)


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _adm_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """ADM's `center_crop_arr` (guided-diffusion image_datasets.py), written out: BOX halvings while the shorter side is
    >= 2 * size, BICUBIC resize of the shorter side to `size` with the other side *rounded*, center crop."""
    while min(image.size) >= 2 * size:
        image = image.resize((image.size[0] // 2, image.size[1] // 2), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)), resample=Image.BICUBIC)
    array = np.asarray(image)
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    return array[top : top + size, left : left + size]


def _to_signed(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1


# ------------------------------------------------------------------------------------------- MAETok (ADM) resize


@pytest.mark.parametrize("width, height, size, resized", [
    # 520 * 128 / 300 = 221.87: rounds to 222 (flooring gives 221, and a crop one pixel to the left)
    (520, 300, 128, (222, 128)),
    # 1100x700 -> BOX 550x350 -> BOX 275x175 -> 275 * 150 / 175 = 235.71 -> 236
    (1100, 700, 150, (236, 150)),
    # portrait, odd target: 301 * 33 / 50 = 198.66 -> 199
    (50, 301, 33, (33, 199)),
    # 1000x600 -> 250x150 -> 213.33 -> 213 (rounding and flooring agree here)
    (1000, 600, 128, (213, 128)),
])
def test_adm_resize_rounds_the_long_side(width, height, size, resized):
    image = _image(width, height)
    assert vistok.processing.image_processing_maetok.adm_resize(image, size).size == resized
    processor = vistok.MAETokImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    values = processor(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(values, _to_signed(_adm_center_crop(image, size)), atol=1e-6, rtol=0)


@PROPERTY
@given(st.integers(9, 90), st.integers(9, 90), st.integers(5, 31), st.integers(0, 100))
def test_maetok_pil_processor_property_equals_adm(width, height, size, seed):
    image = _image(width, height, seed)
    processor = vistok.MAETokImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    values = processor(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(values, _to_signed(_adm_center_crop(image, size)), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------- TiTok / FlexTok: torchvision.transforms


@PROPERTY
@given(st.integers(20, 70), st.integers(20, 70), st.integers(7, 19), st.integers(0, 100))
def test_titok_and_flextok_pil_processors_property_equal_torchvision_transforms(width, height, size, seed):
    image = _image(width, height, seed)
    titok = transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
        transforms.CenterCrop(size), transforms.ToTensor()])(image)[None]
    flextok = transforms.Compose([
        transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
        transforms.Normalize(mean=[0.5] * 3, std=[0.5] * 3)])(image)[None]
    kwargs = dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    ours = vistok.TiTokImageProcessorPil(**kwargs)(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(ours, titok, atol=1e-6, rtol=0)
    ours = vistok.FlexTokImageProcessorPil(**kwargs)(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(ours, flextok, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls, low", [(vistok.TiTokImageProcessor, 0.0), (vistok.FlexTokImageProcessor, -1.0),
                                      (vistok.MAETokImageProcessor, -1.0), (vistok.TiTokImageProcessorPil, 0.0),
                                      (vistok.FlexTokImageProcessorPil, -1.0), (vistok.MAETokImageProcessorPil, -1.0)])
def test_non_square_crops_ranges_and_batch_equals_singles(cls, low):
    processor = cls(size={"shortest_edge": 21}, crop_size={"height": 15, "width": 21})
    images = [_image(45, 23, 1), _image(23, 45, 2), _image(21, 21, 3)]
    batch = processor(images, return_tensors="pt")["pixel_values"]
    assert batch.shape == (3, 3, 15, 21)
    assert batch.min() >= low - 1e-6 and batch.max() <= 1 + 1e-6
    assert batch.min() < low + 0.1 and batch.max() > 0.9  # the range is used, not only bounded
    for i, image in enumerate(images):
        torch.testing.assert_close(processor(image, return_tensors="pt")["pixel_values"][0], batch[i])
    # an image of exactly the crop size passes through unchanged: postprocess restores its bytes
    exact = _image(21, 15, 4)
    processor = cls(size={"shortest_edge": 15}, crop_size={"height": 15, "width": 21})
    values = processor(exact, return_tensors="pt")["pixel_values"]
    assert np.array_equal(processor.postprocess(values, output_type="np")[0], np.asarray(exact))


@pytest.mark.parametrize("cls", [vistok.TiTokImageProcessor, vistok.TiTokImageProcessorPil])
@pytest.mark.parametrize("width, height", [(411, 300), (300, 411), (600, 521), (257, 256)])
def test_resize_and_crop_geometry_like_torchvision(cls, width, height):
    # torchvision: long side int(256 * long / short) (350 for 411x300), crop offset round((side - 256) / 2) (20 for
    # the 295-px side of 600x521, where flooring gives 19); a stripe pattern makes a one-pixel shift visible
    y, x = np.mgrid[0:height, 0:width]
    pattern = np.stack([128 + 100 * np.sin(x / 2.3), 128 + 100 * np.cos(y / 1.7), (x * 7 + y * 3) % 256], -1)
    image = Image.fromarray(pattern.astype(np.uint8))
    reference = transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
        transforms.CenterCrop(256), transforms.ToTensor()])(image)[None]
    ours = cls()(image, return_tensors="pt")["pixel_values"]
    assert ours.shape == (1, 3, 256, 256)
    assert (ours - reference).abs().mean() < 1 / 255


# ------------------------------------------------------------------------------------------------- postprocess


def test_postprocess_hand_computed_values():
    signed = vistok.MAETokImageProcessor()
    unit = vistok.TiTokImageProcessor()
    # [-1, 1] model range: -1 -> 0, 0 -> 127.5 -> 128, 0.5 -> 191.25 -> 191, 1 -> 255, beyond clamps
    reconstruction = torch.tensor([-1.0, 0.0, 0.5, 1.0, 1.7, -3.0]).view(1, 1, 2, 3).expand(1, 3, 2, 3)
    array = signed.postprocess(reconstruction, output_type="np")
    assert array.dtype == np.uint8 and array.shape == (1, 2, 3, 3)
    assert array[0, :, :, 0].tolist() == [[0, 128, 191], [255, 255, 0]]
    torch.testing.assert_close(signed.postprocess(reconstruction, output_type="pt")[0, 0],
                               torch.tensor([[0.0, 0.5, 0.75], [1.0, 1.0, 0.0]]))
    # [0, 1] model range: 0.5 -> 128, 0.25 -> 63.75 -> 64
    unit_array = unit.postprocess(torch.tensor([0.5, 0.25, 1.2, -0.1]).view(1, 2, 2).expand(3, 2, 2), output_type="np")
    assert unit_array.shape == (1, 2, 2, 3) and unit_array[0, :, :, 1].tolist() == [[128, 64], [255, 0]]
    images = unit.postprocess(torch.zeros(2, 3, 5, 7))
    assert [im.size for im in images] == [(7, 5), (7, 5)] and images[0].mode == "RGB"
    with pytest.raises(ValueError, match="output_type must be 'pil', 'np' or 'pt', got 'jpg'"):
        unit.postprocess(torch.zeros(1, 3, 2, 2), output_type="jpg")
    with pytest.raises(ValueError, match=r"\[batch, channels, height, width\], got \(2, 2\)"):
        unit.postprocess(torch.zeros(2, 2))


# --------------------------------------------------------------------------------------------------- pipeline


def _saved(tester, path):
    model = tester.make_model()
    model.save_pretrained(path)
    tester.make_image_processor().save_pretrained(path)
    return model


def test_pipeline_options(tmp_path):
    tester = next(t for t in all_testers() if t.name == "flextok")
    model = _saved(tester, tmp_path)
    pipe = pipeline("image-tokenization", model=str(tmp_path))
    _, height, width = tester.input_shape
    images = [_image(width + 7, height, 1), _image(width, height + 3, 2)]
    # return_reconstruction=False: no image, no decode
    results = pipe(images, return_reconstruction=False)
    assert isinstance(results, list) and len(results) == 2
    assert all(set(r) == {"tokens", "latents"} for r in results)
    # decode_kwargs reach model.decode: a one-step decode with explicit noise differs from the two-step default
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    one = pipe(images[0], decode_kwargs={"num_steps": 1, "noise": noise}, timeout=5.0)
    two = pipe(images[0], decode_kwargs={"num_steps": 2, "noise": noise})
    pixel_values = tester.make_image_processor()(images[0], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        tokens = model.encode(pixel_values).tokens
        expected = model.decode(tokens, num_steps=1, noise=noise).reconstruction
    assert one["tokens"] == tokens[0].tolist()
    reference = tester.make_image_processor().postprocess(expected, output_type="np")[0]
    np.testing.assert_array_equal(np.asarray(one["image"]), reference)
    assert not np.array_equal(np.asarray(one["image"]), np.asarray(two["image"]))


def test_pipeline_in_half_precision(tmp_path):
    tester = next(t for t in all_testers() if t.name == "titok-vq")
    _saved(tester, tmp_path)
    pipe = pipeline("image-tokenization", model=str(tmp_path), dtype=torch.bfloat16)
    result = pipe(_image(40, 32, 3))
    assert pipe.model.dtype == torch.bfloat16 and result["latents"].dtype == torch.float32
    assert len(result["tokens"]) == tester.num_tokens and result["image"].size == (32, 32)
