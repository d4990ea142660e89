"""Shared building blocks: attention dispatch, rotary/sin-cos helpers and quantizers."""

import itertools

import pytest
import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers import initialization as init

from vistok.modeling.layers import (
    VisionAttention,
    VisionEncoderLayer,
    VisionRotaryEmbedding2D,
    apply_rotary_pos_emb,
    get_2d_sincos_pos_embed,
    resample_abs_pos_embed,
)
from vistok.modeling.quantizers import DiagonalGaussianDistribution, FiniteScalarQuantizer, VectorQuantizer


class _Config(PretrainedConfig):
    model_type = "vistok_test_layers"


def _attention(implementation: str, **kwargs) -> VisionAttention:
    config = _Config()
    config._attn_implementation = implementation
    torch.manual_seed(0)
    return VisionAttention(config, 32, 4, **kwargs).eval()


@pytest.mark.parametrize("qk_norm", [None, "layernorm"])
def test_attention_implementations_agree(qk_norm):
    hidden = torch.randn(2, 10, 32)
    rope = VisionRotaryEmbedding2D(8)(3, 3, prefix=1)
    mask = torch.ones(2, 1, 10, 10, dtype=torch.bool).tril()
    reference = None
    for implementation in ("eager", "sdpa"):
        attention = _attention(implementation, qk_norm=qk_norm, scaling=0.3)
        with torch.no_grad():
            out, _ = attention(hidden, attention_mask=mask, position_embeddings=rope)
        if reference is None:
            reference = out
        torch.testing.assert_close(out, reference, atol=1e-6, rtol=1e-5)


def test_is_causal_equals_a_written_out_causal_softmax():
    """`is_causal=True` (sdpa's causal kernel, a lower-triangular mask elsewhere) is attention over tokens <= i."""
    hidden = torch.randn(2, 7, 32)
    for implementation in ("eager", "sdpa"):
        attention = _attention(implementation, scaling=0.3)
        with torch.no_grad():
            out, _ = attention(hidden, is_causal=True)
            heads = lambda x: x.view(2, 7, 4, 8).transpose(1, 2)  # noqa: E731
            q, k, v = heads(attention.q_proj(hidden)), heads(attention.k_proj(hidden)), heads(attention.v_proj(hidden))
            scores = (q @ k.transpose(-1, -2) * 0.3).masked_fill(torch.ones(7, 7).triu(1).bool(), float("-inf"))
            expected = attention.out_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 7, 32))
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5, msg=implementation)
    with pytest.raises(ValueError, match="either attention_mask or is_causal"):
        attention(hidden, attention_mask=torch.ones(7, 7, dtype=torch.bool), is_causal=True)


def test_flex_attention_matches_eager():
    hidden = torch.randn(1, 6, 32)
    with torch.no_grad():
        eager, _ = _attention("eager")(hidden)
        flex, _ = _attention("flex_attention")(hidden)
    torch.testing.assert_close(flex, eager, atol=1e-5, rtol=1e-5)


def test_interleaved_rope_equals_half_rope_under_channel_permutation():
    q, k = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    angles = torch.randn(5, 4)
    # interleaved layout: pair (2i, 2i+1) shares angle i; half layout: (i, i+4)
    cos_i, sin_i = angles.repeat_interleave(2, -1).cos(), angles.repeat_interleave(2, -1).sin()
    cos_h, sin_h = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    perm = torch.tensor([0, 2, 4, 6, 1, 3, 5, 7])
    qi, ki = apply_rotary_pos_emb(q, k, cos_i, sin_i, interleaved=True)
    qh, kh = apply_rotary_pos_emb(q[..., perm], k[..., perm], cos_h, sin_h)
    torch.testing.assert_close(qi[..., perm], qh)
    torch.testing.assert_close(ki[..., perm], kh)
    # the attention's layout: q/k as transposed views of [B, L, heads, D], and bfloat16 in, bfloat16 out
    q_view, k_view = q.transpose(1, 2).contiguous().transpose(1, 2), k.transpose(1, 2).contiguous().transpose(1, 2)
    q_strided, _ = apply_rotary_pos_emb(q_view, k_view, cos_i, sin_i, interleaved=True)
    torch.testing.assert_close(q_strided, qi, atol=1e-6, rtol=0)
    q_bf16, _ = apply_rotary_pos_emb(q_view.bfloat16(), k_view.bfloat16(), cos_i, sin_i, interleaved=True)
    assert q_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(q_bf16.float(), qi, atol=2e-2, rtol=2e-2)
    # rotations keep norms and make scores depend on relative angles only
    torch.testing.assert_close(qi.norm(dim=-1), q.norm(dim=-1))


def test_rope_identity_for_prefix_and_suffix_and_bad_head_dim():
    cos, sin = VisionRotaryEmbedding2D(8)(2, 2, prefix=1, suffix=3)
    assert cos.shape == (8, 8)
    assert torch.equal(cos[0], torch.ones(8)) and torch.equal(sin[-3:], torch.zeros(3, 8))
    with pytest.raises(ValueError, match="divisible by 4"):
        VisionRotaryEmbedding2D(6)


class _RopeModel(PreTrainedModel):
    config_class = _Config

    def __init__(self, config):
        super().__init__(config)
        self.rope = VisionRotaryEmbedding2D(16, theta=100.0)
        self.proj = torch.nn.Linear(4, 4)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, VisionRotaryEmbedding2D):
            init.copy_(module.inv_freq, module.compute_inv_freq())


def test_rope_buffers_are_recomputed_after_meta_device_loading(tmp_path):
    model = _RopeModel(_Config())
    model.save_pretrained(tmp_path)
    reloaded = _RopeModel.from_pretrained(tmp_path)
    assert reloaded.rope.inv_freq.device.type == "cpu"
    torch.testing.assert_close(reloaded.rope.inv_freq, model.rope.compute_inv_freq())


def test_encoder_layer_options_and_sincos_tables():
    config = _Config()
    config._attn_implementation = "sdpa"
    layer = VisionEncoderLayer(config, 32, 4, 64, norm_affine=False, layer_scale_init=1e-5, gated_mlp=True,
                               hidden_act="silu", qkv_bias=False)
    assert not list(layer.norm1.parameters()) and layer.mlp.fc3 is not None
    hidden = torch.randn(2, 5, 32)
    # LayerScale at 1e-5 keeps the layer close to the identity
    assert (layer(hidden) - hidden).abs().max() < 1e-3
    table = get_2d_sincos_pos_embed(16, 3, 4)
    assert table.shape == (12, 16)
    assert torch.equal(table[0, :4], torch.zeros(4)) and torch.equal(table[0, 4:8], torch.ones(4))
    assert len({tuple(row.tolist()) for row in table}) == 12
    pos = torch.randn(1 + 16, 8)
    assert torch.equal(resample_abs_pos_embed(pos, (4, 4), num_prefix_tokens=1), pos)
    resized = resample_abs_pos_embed(pos, (6, 6), num_prefix_tokens=1)
    assert resized.shape == (37, 8) and torch.equal(resized[0], pos[0])


@pytest.mark.parametrize("use_l2_norm", [False, True])
def test_vector_quantizer_is_exact_nearest_neighbour(use_l2_norm):
    torch.manual_seed(0)
    quantizer = VectorQuantizer(50, 6, use_l2_norm=use_l2_norm)
    torch.nn.init.normal_(quantizer.embedding)
    latents = torch.randn(3, 7, 6)
    out = quantizer.eval()(latents)
    z = latents / latents.norm(dim=-1, keepdim=True) if use_l2_norm else latents
    weight = quantizer.embedding.detach()
    codebook = weight / weight.norm(dim=-1, keepdim=True) if use_l2_norm else weight
    brute = torch.cdist(z.reshape(-1, 6), codebook).argmin(-1).view(3, 7)
    assert torch.equal(out.indices, brute)
    torch.testing.assert_close(out.quantized, codebook[brute])
    torch.testing.assert_close(quantizer.lookup(out.indices), out.quantized)
    assert out.loss is None
    with pytest.raises(ValueError, match="last dimension 6"):
        quantizer(torch.randn(2, 5))


def test_vector_quantizer_training_straight_through():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(10, 4).train()
    torch.nn.init.normal_(quantizer.embedding)
    latents = torch.randn(2, 3, 4, requires_grad=True)
    out = quantizer(latents)
    assert out.loss is not None and out.loss > 0
    out.quantized.sum().backward()
    assert torch.equal(latents.grad, torch.ones_like(latents))
    assert quantizer.embedding.grad is None or quantizer.embedding.grad.abs().sum() == 0


def test_fsq_ids_round_trip_over_the_whole_vocabulary():
    fsq = FiniteScalarQuantizer([8, 5, 3])
    assert fsq.codebook_size == 120 and fsq.embedding_dim == 3
    ids = torch.arange(120)
    codes = fsq.lookup(ids)
    assert codes.min() >= -1 and codes.max() <= 1
    assert len({tuple(c.tolist()) for c in codes}) == 120
    out = fsq(torch.atanh(codes.clamp(-0.999, 0.999)) * 3)
    # quantizing a code's own pre-image returns the same id: bound() is monotonic and centred on the grid
    for level_values in itertools.islice(itertools.product(range(8), range(5), range(3)), 0, 120, 7):
        digits = torch.tensor(level_values)
        identifier = int((digits * torch.tensor([1, 8, 40])).sum())
        code = fsq.lookup(torch.tensor([identifier]))
        assert torch.equal((code * torch.tensor([4, 2, 1]) + torch.tensor([4, 2, 1])).round().long()[0], digits)
    assert out.indices.shape == (120,)
    with pytest.raises(ValueError, match="last dimension 3"):
        fsq(torch.randn(2, 4))


def test_fsq_quantize_then_lookup_is_consistent():
    fsq = FiniteScalarQuantizer([8, 8, 8, 5, 5, 5])
    assert fsq.codebook_size == 64000
    out = fsq(torch.randn(4, 16, 6) * 3)
    torch.testing.assert_close(fsq.lookup(out.indices), out.quantized)
    assert out.indices.min() >= 0 and out.indices.max() < 64000


def test_diagonal_gaussian():
    parameters = torch.cat([torch.zeros(2, 3, 4), torch.full((2, 3, 4), 50.0)], dim=-1)
    posterior = DiagonalGaussianDistribution(parameters)
    assert torch.equal(posterior.logvar, torch.full((2, 3, 4), 20.0))
    standard = DiagonalGaussianDistribution(torch.zeros(2, 3, 8))
    torch.testing.assert_close(standard.kl(), torch.zeros(2))
    a = standard.sample(generator=torch.Generator().manual_seed(0))
    b = standard.sample(generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, standard.mode())
    noise = torch.randn(2, 3, 4)
    torch.testing.assert_close(standard.sample(noise=noise), noise)
