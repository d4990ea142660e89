"""Quantizers against hand-computed cases and written-out formulas, plus property tests (hypothesis).

Every expected value here is computed independently of the code under test: literal numbers worked out by hand, or
the published formulas (FSQ's bound, the VQ-VAE losses, the Gaussian KL) evaluated in numpy / float64.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from testers import all_testers
from vistok.modeling.quantizers import DiagonalGaussianDistribution, FiniteScalarQuantizer, VectorQuantizer


PROPERTY = settings(max_examples=25, deadline=None, derandomize=True, database=None)


def _vq(codebook, **kwargs) -> VectorQuantizer:
    codebook = torch.tensor(codebook, dtype=torch.float32)
    quantizer = VectorQuantizer(codebook.shape[0], codebook.shape[1], **kwargs)
    with torch.no_grad():
        quantizer.embedding.copy_(codebook)
    return quantizer.eval()


# ------------------------------------------------------------------------------------------------ vector quantizer


def test_vq_hand_computed_nearest_codes():
    # squared distances worked out by hand, e.g. [0.6, 0.2]: 0.40 to (0, 0), 0.20 to (1, 0), 3.40 to (0, 2)
    quantizer = _vq([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    latents = torch.tensor([[[0.4, 0.1], [0.6, 0.2], [0.1, 1.2], [-1.0, 0.9]]])
    out = quantizer(latents)
    assert out.indices.tolist() == [[0, 1, 2, 0]] and out.indices.dtype == torch.long
    expected = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]])
    assert torch.equal(out.quantized, expected) and out.quantized.dtype == torch.float32
    assert torch.equal(quantizer.lookup(torch.tensor([2, 1])), torch.tensor([[0.0, 2.0], [1.0, 0.0]]))
    assert out.loss is None


def test_vq_l2_normalised_search_and_lookup():
    # normalised codebook: (0.6, 0.8), (1, 0), (0, -1); inputs are compared by direction only
    quantizer = _vq([[3.0, 4.0], [1.0, 0.0], [0.0, -2.0]], use_l2_norm=True)
    out = quantizer(torch.tensor([[1.0, 1.0], [2.0, -0.1], [0.1, -3.0], [30.0, 40.0]]))
    assert out.indices.tolist() == [0, 1, 2, 0]
    expected = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, -1.0], [0.6, 0.8]])
    torch.testing.assert_close(out.quantized, expected, atol=1e-7, rtol=0)
    torch.testing.assert_close(quantizer.lookup(torch.tensor([0, 2])), expected[[0, 2]], atol=1e-7, rtol=0)
    # without the normalisation (3, 4) is far from (1, 1): the search really depends on use_l2_norm
    assert _vq([[3.0, 4.0], [1.0, 0.0], [0.0, -2.0]])(torch.tensor([[1.0, 1.0]])).indices.tolist() == [1]


@pytest.mark.parametrize("beta", [0.25, 0.7])
def test_vq_training_loss_and_gradients_follow_the_vqvae_definition(beta):
    quantizer = _vq([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], commitment_cost=beta).train()
    z = torch.tensor([[0.4, 0.1], [0.6, 0.2]], requires_grad=True)
    out = quantizer(z)
    # codes (0, 0) and (1, 0); squared errors 0.16, 0.01, 0.16, 0.04 -> mean 0.0925
    # loss = beta * ||sg(q) - z||^2 (commitment) + ||q - sg(z)||^2 (codebook), both as means
    torch.testing.assert_close(out.loss, torch.tensor((1 + beta) * 0.0925), atol=1e-7, rtol=0)
    # the straight-through value is the code itself
    torch.testing.assert_close(out.quantized, torch.tensor([[0.0, 0.0], [1.0, 0.0]]), atol=1e-7, rtol=0)
    out.loss.backward()
    # d/dz = beta * 2 (z - q) / 4; d/de_k = 2 (e_k - z) / 4 summed over the latents assigned to code k
    torch.testing.assert_close(z.grad, beta * 0.5 * torch.tensor([[0.4, 0.1], [-0.4, 0.2]]), atol=1e-7, rtol=0)
    expected_codebook_grad = torch.tensor([[-0.2, -0.05], [0.2, -0.1], [0.0, 0.0]])
    torch.testing.assert_close(quantizer.embedding.grad, expected_codebook_grad, atol=1e-7, rtol=0)


def test_vq_straight_through_gradient_is_the_identity():
    quantizer = _vq([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]).train()
    z = torch.tensor([[[0.4, 0.1], [0.6, 0.2], [0.1, 1.2]]], requires_grad=True)
    weights = torch.tensor([[[1.0, -2.0], [3.0, 0.5], [-0.25, 4.0]]])
    (quantizer(z).quantized * weights).sum().backward()
    # d(sum w * q)/dz = w exactly: the decoder's gradient reaches the encoder unchanged (sign included)
    assert torch.equal(z.grad, weights)
    # the codebook only learns through the loss, not through the straight-through path
    assert quantizer.embedding.grad is None or torch.count_nonzero(quantizer.embedding.grad) == 0


def test_vq_computes_in_float32_for_half_precision_inputs():
    quantizer = _vq([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    out = quantizer(torch.tensor([[0.6, 0.2], [0.1, 1.2]], dtype=torch.bfloat16))
    assert out.quantized.dtype == torch.float32 and out.indices.tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"last dimension 2, got \(3, 5\)"):
        quantizer(torch.zeros(3, 5))


@st.composite
def _codebooks(draw):
    size = draw(st.integers(2, 12))
    dim = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    codebook = torch.randn(size, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ids = draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=9))
    return codebook.float(), torch.tensor(ids)


@PROPERTY
@given(_codebooks(), st.booleans())
def test_vq_property_lookup_then_quantize_returns_the_ids(case, use_l2_norm):
    codebook, ids = case
    if use_l2_norm:
        # directions must be distinct for the ids to be recoverable
        unit = codebook / codebook.norm(dim=-1, keepdim=True)
        assume(codebook.shape[1] > 1 and (unit @ unit.T - 2 * torch.eye(len(unit))).max() < 0.999)
    quantizer = _vq(codebook.tolist(), use_l2_norm=use_l2_norm)
    codes = quantizer.lookup(ids)
    out = quantizer(codes)
    # unique directions/points in a random gaussian codebook: every code is its own nearest neighbour
    assert torch.equal(out.indices, ids)
    torch.testing.assert_close(out.quantized, codes)
    norms = codes.norm(dim=-1)
    if use_l2_norm:
        torch.testing.assert_close(norms, torch.ones_like(norms))


@PROPERTY
@given(_codebooks(), st.integers(0, 2**16))
def test_vq_property_nearest_neighbour_and_batch_equals_singles(case, seed):
    codebook, _ = case
    quantizer = _vq(codebook.tolist())
    latents = torch.randn(3, 4, codebook.shape[1], generator=torch.Generator().manual_seed(seed))
    out = quantizer(latents)
    # brute force in float64 numpy: the chosen code is at the minimal distance
    flat = latents.reshape(-1, codebook.shape[1]).double().numpy()
    distances = ((flat[:, None, :] - codebook.double().numpy()[None]) ** 2).sum(-1)
    chosen = distances[np.arange(len(flat)), out.indices.flatten().numpy()]
    np.testing.assert_allclose(chosen, distances.min(1), atol=1e-5)
    singles = torch.stack([quantizer(latents[i : i + 1]).indices[0] for i in range(3)])
    assert torch.equal(singles, out.indices)


# ------------------------------------------------------------------------------------- finite scalar quantization


def _fsq_bound(z: np.ndarray, levels, eps=1e-3) -> np.ndarray:
    """FSQ's bound written out (Mentzer et al., 2023, appendix): tanh(z + atanh(o / h)) * h - o with
    h = (L - 1)(1 + eps) / 2 and o = 0.5 for even L, 0 for odd L."""
    levels = np.asarray(levels, dtype=np.float64)
    half = (levels - 1) * (1 + eps) / 2
    offset = np.where(levels % 2 == 0, 0.5, 0.0)
    return np.tanh(z + np.arctanh(offset / half)) * half - offset


def _fsq_preimage(digits: np.ndarray, levels, eps=1e-3) -> np.ndarray:
    """A latent whose bounded value is exactly the integer digit - L // 2 (inverse of the bound above)."""
    levels = np.asarray(levels, dtype=np.float64)
    half = (levels - 1) * (1 + eps) / 2
    offset = np.where(levels % 2 == 0, 0.5, 0.0)
    target = digits - levels // 2
    return np.arctanh((target + offset) / half) - np.arctanh(offset / half)


def test_fsq_hand_computed_ids_and_codes():
    fsq = FiniteScalarQuantizer([8, 5])
    assert fsq.codebook_size == 40 and fsq.embedding_dim == 2
    latents = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, -10.0], [10.0, -10.0], [-10.0, 10.0]])
    out = fsq(latents)
    # digits (L // 2 + rounded bound): (4, 2), (7, 4), (0, 0), (7, 0), (0, 4); id = d0 + 8 * d1
    assert out.indices.tolist() == [20, 39, 0, 7, 32]
    # codes = (digit - L // 2) / (L // 2): an even level count reaches -1 but stops at 3/4
    expected = torch.tensor([[0.0, 0.0], [0.75, 1.0], [-1.0, -1.0], [0.75, -1.0], [-1.0, 1.0]])
    torch.testing.assert_close(out.quantized, expected, atol=1e-7, rtol=0)
    torch.testing.assert_close(fsq.lookup(torch.tensor([20, 39, 0, 7, 32])), expected, atol=1e-7, rtol=0)
    assert out.loss is None


def test_fsq_matches_the_written_out_bound_and_its_gradient():
    levels = [8, 5, 3, 4]
    fsq = FiniteScalarQuantizer(levels)
    z = torch.tensor([[0.3, 0.7, -0.2, 1.3], [-0.9, 0.1, 2.0, -0.4], [0.05, -1.7, 0.4, 0.2]], dtype=torch.float32)
    bounded = _fsq_bound(z.double().numpy(), levels)
    half_width = np.array(levels) // 2
    digits = np.round(bounded) + half_width
    expected_ids = (digits * np.array([1, 8, 40, 120])).sum(-1)
    z.requires_grad_(True)
    out = fsq(z)
    assert out.indices.tolist() == expected_ids.astype(int).tolist()
    np.testing.assert_allclose(out.quantized.detach().numpy(), np.round(bounded) / half_width, atol=1e-6)
    # straight-through rounding: d codes / dz = d bound / dz / (L // 2), with d bound / dz = h (1 - tanh^2)
    out.quantized.sum().backward()
    levels_np = np.array(levels, dtype=np.float64)
    half = (levels_np - 1) * (1 + 1e-3) / 2
    shift = np.arctanh(np.where(levels_np % 2 == 0, 0.5, 0.0) / half)
    expected_grad = half * (1 - np.tanh(z.detach().double().numpy() + shift) ** 2) / half_width
    np.testing.assert_allclose(z.grad.numpy(), expected_grad, rtol=1e-5, atol=1e-7)


@st.composite
def _levels_and_ids(draw):
    levels = draw(st.lists(st.integers(2, 9), min_size=1, max_size=4))
    size = math.prod(levels)
    ids = draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=12))
    return levels, torch.tensor(ids)


@PROPERTY
@given(_levels_and_ids())
def test_fsq_property_id_code_round_trip(case):
    levels, ids = case
    fsq = FiniteScalarQuantizer(levels)
    codes = fsq.lookup(ids)
    assert codes.shape == (len(ids), len(levels))
    assert codes.min() >= -1 and codes.max() <= 1
    # the mixed-radix digits, first channel least significant, written out
    digits = np.array([[(int(i) // math.prod(levels[:c])) % levels[c] for c in range(len(levels))] for i in ids])
    half_width = np.array(levels) // 2
    np.testing.assert_allclose(codes.numpy(), (digits - half_width) / half_width, atol=1e-7)
    # quantizing a latent that bounds onto those digits gives back the ids and the codes
    latents = torch.from_numpy(_fsq_preimage(digits.astype(np.float64), levels)).float()
    out = fsq(latents)
    assert torch.equal(out.indices, ids)
    torch.testing.assert_close(out.quantized, codes, atol=1e-6, rtol=0)


@PROPERTY
@given(st.lists(st.integers(2, 9), min_size=1, max_size=4), st.integers(0, 2**16), st.floats(0.1, 6.0))
def test_fsq_property_ranges_and_batch_equals_singles(levels, seed, scale):
    fsq = FiniteScalarQuantizer(levels)
    latents = torch.randn(4, 3, len(levels), generator=torch.Generator().manual_seed(seed)) * scale
    out = fsq(latents)
    assert out.indices.min() >= 0 and out.indices.max() < math.prod(levels)
    assert out.quantized.min() >= -1 and out.quantized.max() <= 1
    torch.testing.assert_close(fsq.lookup(out.indices), out.quantized)
    for i in range(4):
        single = fsq(latents[i : i + 1])
        assert torch.equal(single.indices[0], out.indices[i])


# ------------------------------------------------------------------------------------------ gaussian posterior


def test_gaussian_posterior_hand_computed_std_sample_and_kl():
    # mean (1, -2), logvar (log 4, log 1/4): std (2, 1/2)
    parameters = torch.tensor([[1.0, -2.0, math.log(4.0), math.log(0.25)]])
    posterior = DiagonalGaussianDistribution(parameters)
    torch.testing.assert_close(posterior.mean, torch.tensor([[1.0, -2.0]]))
    torch.testing.assert_close(posterior.std, torch.tensor([[2.0, 0.5]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(posterior.sample(noise=torch.tensor([[1.0, 1.0]])), torch.tensor([[3.0, -1.5]]))
    torch.testing.assert_close(posterior.sample(noise=torch.tensor([[-0.5, 2.0]])), torch.tensor([[0.0, -1.0]]))
    assert torch.equal(posterior.mode(), posterior.mean)
    # KL(N(m, s^2) || N(0, 1)) = 0.5 (m^2 + s^2 - 1 - log s^2): 1.306853 + 2.318147
    expected = 0.5 * (1 + 4 - 1 - math.log(4)) + 0.5 * (4 + 0.25 - 1 - math.log(0.25))
    torch.testing.assert_close(posterior.kl(), torch.tensor([expected]), atol=1e-6, rtol=0)


def test_gaussian_posterior_layout_clamp_and_seeded_sampling():
    # dim=1: channels [mean | logvar] along dimension 1, KL summed over everything but the batch
    mean = torch.tensor([[[0.5], [-1.0]], [[2.0], [0.0]]])
    logvar = torch.tensor([[[50.0], [-50.0]], [[0.0], [math.log(9.0)]]])
    posterior = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1), dim=1)
    assert torch.equal(posterior.logvar, torch.tensor([[[20.0], [-30.0]], [[0.0], [math.log(9.0)]]]))
    torch.testing.assert_close(posterior.std[1], torch.tensor([[1.0], [3.0]]))
    torch.testing.assert_close(posterior.std[0], torch.tensor([[math.exp(10.0)], [math.exp(-15.0)]]))
    expected_second = 0.5 * (4 + 1 - 1 - 0) + 0.5 * (0 + 9 - 1 - math.log(9.0))
    torch.testing.assert_close(posterior.kl()[1], torch.tensor(expected_second), atol=1e-5, rtol=0)
    # generator sampling: mean + std * randn drawn in the mean's shape
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    sample = posterior.sample(generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(sample[1], mean[1] + torch.tensor([[1.0], [3.0]]) * noise[1])


def _tester(name):
    return next(t for t in all_testers() if t.name == name)


def test_vae_tokenizer_samples_with_std_exp_half_logvar_and_reports_the_kl():
    tester = _tester("titok-vae")
    model = tester.make_model()
    pixel_values = tester.make_pixel_values(2)
    with torch.no_grad():
        encoded = model.encode(pixel_values)
        sampled = model.encode(pixel_values, sample_posterior=True, generator=torch.Generator().manual_seed(4)).latents
    mean, logvar = encoded.latents, encoded.posterior_logvar
    # the encoder output holds [mean | logvar] along the channels; the logvar is clamped to [-30, 20]
    half = encoded.encoder_output.shape[-1] // 2
    torch.testing.assert_close(mean, encoded.encoder_output[..., :half])
    torch.testing.assert_close(logvar, encoded.encoder_output[..., half:].clamp(-30, 20))
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(sampled, mean + torch.exp(0.5 * logvar) * noise, atol=1e-6, rtol=1e-6)
    # training: the quantization loss is the batch mean of the per-image KL sum, weighted into the loss
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        output = model(pixel_values, labels=pixel_values)
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1).mean()
    torch.testing.assert_close(output.quantization_loss, kl, atol=1e-4, rtol=1e-5)
    reconstruction = torch.nn.functional.mse_loss(output.reconstruction, pixel_values)
    torch.testing.assert_close(output.loss, reconstruction + model.quantization_loss_weight * kl, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", ["titok-vq", "titok-legacy-vq"])
def test_vq_tokenizer_training_loss_has_the_exact_value_and_weight(name):
    tester = _tester(name)
    model = tester.make_model()
    pixel_values = tester.make_pixel_values(2)
    with torch.no_grad():
        encoded = model.encode(pixel_values)
    z = encoded.encoder_output.float()
    if model.config.use_l2_norm:
        z = z / z.norm(dim=-1, keepdim=True)
    beta = model.config.commitment_cost
    expected_quantization = (1 + beta) * (encoded.latents - z).pow(2).mean()
    model.train()
    model.quantization_loss_weight = 0.3
    with torch.no_grad():
        output = model(pixel_values, labels=pixel_values)
    torch.testing.assert_close(output.quantization_loss, expected_quantization, atol=1e-6, rtol=1e-5)
    reconstruction = torch.nn.functional.mse_loss(output.reconstruction, pixel_values)
    torch.testing.assert_close(output.loss, reconstruction + 0.3 * expected_quantization, atol=1e-6, rtol=1e-5)
    # training mode passes the quantized values straight through: same reconstruction as eval mode
    with torch.no_grad():
        eval_reconstruction = model.eval()(pixel_values).reconstruction
    torch.testing.assert_close(output.reconstruction, eval_reconstruction, atol=1e-5, rtol=1e-5)
