"""Bad input never gives a silent wrong result: each class of bad input, on every tester, raises a ValueError that
names the tensor, the items and expected vs got. Classes checked per model (see `BAD_INPUT_CLASSES`)."""

import re

import pytest
import torch

import vistok  # noqa: F401
from testers import all_testers


TESTERS = all_testers()
IDS = [t.name for t in TESTERS]

#: the classes of bad input every tokenizer is checked against here (reported in the issue note)
BAD_INPUT_CLASSES = (
    "NaN pixel", "inf pixel", "empty pixel batch", "NaN latents", "empty token batch", "boolean ids",
    "float ids given as latents of the wrong width", "latents of the wrong width", "forward with NaN pixels",
)


@pytest.fixture(params=TESTERS, ids=IDS, scope="module")
def tester(request):
    return request.param


@pytest.fixture(scope="module")
def model_and_encoding(tester):
    model = tester.make_model()
    with torch.no_grad():
        encoded = model.encode(tester.make_pixel_values(3))
    return model, encoded


def test_non_finite_pixels_name_the_items(tester, model_and_encoding):
    model, _ = model_and_encoding
    pixel_values = tester.make_pixel_values(3)
    pixel_values[1].view(-1)[5] = float("nan")
    with pytest.raises(ValueError, match=re.escape("pixel_values holds non-finite values (NaN) in batch item(s) [1]")):
        model.encode(pixel_values)
    pixel_values[1].view(-1)[5] = 0.0
    pixel_values[0].view(-1)[0] = float("inf")
    pixel_values[2].view(-1)[-1] = -float("inf")
    with pytest.raises(ValueError, match=re.escape("(inf) in batch item(s) [0, 2]")):
        model.encode(pixel_values)
    with pytest.raises(ValueError, match=re.escape("in batch item(s) [0, 2]")):
        model(pixel_values, **tester.make_decode_kwargs(3))


def test_empty_batches_raise(tester, model_and_encoding):
    model, encoded = model_and_encoding
    empty = tester.make_pixel_values(1)[:0]
    with pytest.raises(ValueError, match=r"pixel_values is an empty batch \(shape \(0, "):
        model.encode(empty)
    source = encoded.tokens if encoded.tokens is not None else encoded.latents
    with pytest.raises(ValueError, match=r"(tokens|latents) is an empty batch"):
        model.decode(source[:0], **tester.make_decode_kwargs(0))


def test_latents_are_checked(tester, model_and_encoding):
    model, encoded = model_and_encoding
    kwargs = tester.make_decode_kwargs(3)
    latents = encoded.latents.clone()
    latents[2, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=re.escape("latents holds non-finite values (NaN) in batch item(s) [2]")):
        model.decode(latents, **kwargs)
    if model.layout.tokens == "1d":
        width = encoded.latents.shape[-1]
        wider = torch.cat([encoded.latents, encoded.latents[..., :1]], dim=-1)
        message = f"latents must have {width} channels in their last dimension, got {width + 1}"
    else:  # grid latents carry their channels in dimension -3 ([B, D, h, w] / [B, t, D, h, w])
        width = encoded.latents.shape[-3]
        wider = torch.cat([encoded.latents, encoded.latents[..., :1, :, :]], dim=-3)
        message = f"channels in dimension {encoded.latents.ndim - 3}, got {width + 1}"
    with pytest.raises(ValueError, match=re.escape(message)):
        model.decode(wider, **kwargs)


def test_integer_ids_of_any_width_decode_the_same_and_booleans_are_refused(tester, model_and_encoding):
    model, encoded = model_and_encoding
    if encoded.tokens is None:
        pytest.skip("continuous tokenizer")
    kwargs = tester.make_decode_kwargs(3)
    with torch.no_grad():
        expected = model.decode(encoded.tokens, **kwargs).reconstruction
        for dtype in (torch.int32, torch.int16):
            if int(encoded.tokens.max()) <= torch.iinfo(dtype).max:
                got = model.decode(encoded.tokens.to(dtype), **tester.make_decode_kwargs(3)).reconstruction
                torch.testing.assert_close(got, expected, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"token ids must be an integer tensor, got dtype torch.bool"):
        model.decode(encoded.tokens > 0, **kwargs)
    with pytest.raises(ValueError, match=r"must be an integer tensor, got dtype torch.complex64"):
        model.validate_tokens(encoded.tokens.to(torch.complex64))


def test_layout_describes_the_model(tester, model_and_encoding):
    """The declared layout agrees with what the model does (so checks derived from it are right)."""
    model, encoded = model_and_encoding
    layout = model.layout
    assert layout.num_channels == tester.input_shape[-3]  # (C, H, W) or (T, C, H, W)
    assert layout.latent_dim == (encoded.latents.shape[-1] if layout.tokens == "1d" else None)
    assert (layout.vocab_size is not None) == (encoded.tokens is not None)
    if layout.tokens == "1d":
        count = layout.num_tokens or layout.max_tokens
        assert encoded.latents.shape[1] == count


def test_empty_image_list_raises_in_the_processor(tester):
    if len(tester.input_shape) != 3:
        pytest.skip("image processors only")
    with pytest.raises(ValueError, match="got an empty list of images"):
        tester.make_image_processor()([], return_tensors="pt")


def test_pipelines_say_what_a_conditional_decoder_needs(tester):
    """`image-tokenization` passes `decode_kwargs` through; without the condition it names what is missing."""
    if len(tester.input_shape) != 3 or "text_guidance" not in tester.make_decode_kwargs(1):
        pytest.skip("decoder without a condition, or a video tokenizer")
    import numpy as np
    from PIL import Image
    from transformers import pipeline

    model, processor = tester.make_model(), tester.make_image_processor()
    pipe = pipeline("image-tokenization", model=model, image_processor=processor)
    _, height, width = tester.input_shape
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height + 3, width + 5, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="needs `text_guidance`"):
        pipe(image)
    result = pipe(image, decode_kwargs=tester.make_decode_kwargs(1))
    assert result["image"].size == (width, height)
    features = pipeline("image-feature-extraction", model=model, image_processor=processor)(image)
    with torch.no_grad():
        expected = model.encode(processor(image, return_tensors="pt")["pixel_values"]).latents[0]
    torch.testing.assert_close(torch.tensor(features[0]), expected)
