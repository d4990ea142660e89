"""Shared layers against hand-computed values and written-out formulas (sin-cos tables, rotary embeddings, attention,
MLPs, residual layers, initialisation, position-embedding resampling), including non-square grids."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import PretrainedConfig

from vistok.modeling.layers import (
    LayerScale,
    VisionAttention,
    VisionEncoderLayer,
    VisionMLP,
    VisionRotaryEmbedding2D,
    apply_rotary_pos_emb,
    eager_attention_forward,
    get_1d_sincos_pos_embed,
    get_2d_sincos_pos_embed,
    init_common_weights,
    resample_abs_pos_embed,
    rotate_half,
)


class _Config(PretrainedConfig):
    model_type = "vistok_test_layer_values"


def _config(implementation="eager", **kwargs):
    config = _Config(**kwargs)
    config._attn_implementation = implementation
    return config


def _sincos(p, omegas):
    return [math.sin(p * w) for w in omegas] + [math.cos(p * w) for w in omegas]


def test_1d_and_2d_sincos_tables_hand_computed():
    # omega_i = 1 / 10000^(i / (D/2)): (1, 0.01) for D = 4
    table = get_1d_sincos_pos_embed(4, torch.tensor([0.0, 1.0, 2.0]))
    expected = torch.tensor([_sincos(p, [1.0, 0.01]) for p in (0, 1, 2)])
    torch.testing.assert_close(table, expected, atol=1e-7, rtol=0)
    assert table.dtype == torch.float32
    torch.testing.assert_close(get_1d_sincos_pos_embed(4, torch.tensor([3.0]), max_period=100.0),
                               torch.tensor([_sincos(3, [1.0, 0.1])]), atol=1e-7, rtol=0)
    # 2D, a non-square 2x3 grid in row-major order, [emb(row) | emb(column)]
    table = get_2d_sincos_pos_embed(8, 2, 3)
    assert table.shape == (6, 8)
    for index, (row, column) in enumerate([(r, c) for r in range(2) for c in range(3)]):
        expected = torch.tensor(_sincos(row, [1.0, 0.01]) + _sincos(column, [1.0, 0.01]))
        torch.testing.assert_close(table[index], expected, atol=1e-7, rtol=0)
    with pytest.raises(ValueError, match="embed_dim must be even for a sin-cos table, got 5"):
        get_1d_sincos_pos_embed(5, torch.arange(2))
    with pytest.raises(ValueError, match="embed_dim must be divisible by 4 for a 2D sin-cos table, got 6"):
        get_2d_sincos_pos_embed(6, 2, 2)


def test_rotations_hand_computed():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert rotate_half(x).tolist() == [-3.0, -4.0, 1.0, 2.0]
    # a quarter turn: (1, 0) -> (0, 1); half layout pairs (i, i + D/2), interleaved pairs (2i, 2i + 1)
    q = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 1, 1, 4)
    angle = torch.tensor([math.pi / 2, 0.0, math.pi / 2, 0.0])
    q_half, k_half = apply_rotary_pos_emb(q, 2 * q, angle.cos(), angle.sin())
    torch.testing.assert_close(q_half.flatten(), torch.tensor([0.0, 0.0, 1.0, 1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(k_half, 2 * q_half)
    interleaved_angle = torch.tensor([math.pi / 2, math.pi / 2, 0.0, 0.0])
    q_int, _ = apply_rotary_pos_emb(q, q, interleaved_angle.cos(), interleaved_angle.sin(), interleaved=True)
    torch.testing.assert_close(q_int.flatten(), torch.tensor([0.0, 1.0, 0.0, 1.0]), atol=1e-6, rtol=0)
    # the rotation runs in float32 and returns the input dtype
    q_bf16, _ = apply_rotary_pos_emb(q.bfloat16(), q.bfloat16(), angle.cos(), angle.sin())
    assert q_bf16.dtype == torch.bfloat16


def test_2d_rotary_angles_hand_computed_on_a_non_square_grid():
    rope = VisionRotaryEmbedding2D(8, theta=100.0)
    # quarter = 2 frequencies: 1 / 100^(i / 2) = (1, 0.1)
    torch.testing.assert_close(rope.inv_freq, torch.tensor([1.0, 0.1]))
    cos, sin = rope(2, 3, prefix=1, suffix=2)
    assert cos.shape == (1 + 6 + 2, 8)
    for index, (row, column) in enumerate([(r, c) for r in range(2) for c in range(3)]):
        half = [row * 1.0, row * 0.1, column * 1.0, column * 0.1]
        angles = torch.tensor(half + half)
        torch.testing.assert_close(cos[1 + index], angles.cos(), atol=1e-6, rtol=0)
        torch.testing.assert_close(sin[1 + index], angles.sin(), atol=1e-6, rtol=0)
    assert torch.equal(cos[0], torch.ones(8)) and torch.equal(sin[-2:], torch.zeros(2, 8))


def test_eager_attention_matches_the_written_formula_and_masks():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 4, 5, generator=generator) for _ in range(3))
    module = torch.nn.Module().eval()
    out, weights = eager_attention_forward(module, q, k, v, None, scaling=0.7)
    expected_weights = torch.softmax(q @ k.transpose(-1, -2) * 0.7, dim=-1)
    torch.testing.assert_close(weights, expected_weights)
    torch.testing.assert_close(out, (expected_weights @ v).transpose(1, 2))
    assert out.shape == (2, 4, 3, 5)
    # boolean mask (True = attend): masked keys get zero weight; an additive mask is added to the scores
    mask = torch.tensor([[True, True, False, False]] * 4)[None, None]
    _, masked = eager_attention_forward(module, q, k, v, mask, scaling=0.7)
    assert torch.equal(masked[..., 2:], torch.zeros_like(masked[..., 2:]))
    torch.testing.assert_close(masked[..., :2], torch.softmax(q @ k.transpose(-1, -2)[..., :2] * 0.7, dim=-1))
    additive = torch.tensor([0.0, 1.0, -2.0, 0.5]).view(1, 1, 1, 4)
    _, shifted = eager_attention_forward(module, q, k, v, additive, scaling=0.7)
    torch.testing.assert_close(shifted, torch.softmax(q @ k.transpose(-1, -2) * 0.7 + additive, dim=-1))


@pytest.mark.parametrize("qk_norm", [None, "layernorm", "layernorm_affine"])
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_vision_attention_matches_the_written_formula(qk_norm, implementation):
    torch.manual_seed(0)
    attention = VisionAttention(_config(implementation), 12, 3, qk_norm=qk_norm, out_bias=False).eval()
    assert attention.scaling == 4**-0.5 and attention.out_proj.bias is None
    if qk_norm == "layernorm_affine":
        with torch.no_grad():
            attention.q_norm.weight.uniform_(0.5, 1.5)
            attention.k_norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 5, 12)

    def heads(t):
        return t.view(2, 5, 3, 4).transpose(1, 2)

    q, k, v = heads(attention.q_proj(x)), heads(attention.k_proj(x)), heads(attention.v_proj(x))
    if qk_norm is not None:
        q, k = attention.q_norm(q), attention.k_norm(k)
        if qk_norm == "layernorm":
            torch.testing.assert_close(q, F.layer_norm(heads(attention.q_proj(x)), (4,)))
    scores = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
    expected = attention.out_proj((scores @ v).transpose(1, 2).reshape(2, 5, 12))
    with torch.no_grad():
        out, _ = attention(x)
    torch.testing.assert_close(out, expected.detach(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"hidden_size \(10\) must be divisible by num_heads \(3\)"):
        VisionAttention(_config(), 10, 3)
    with pytest.raises(ValueError, match="qk_norm must be None, 'layernorm' or 'layernorm_affine', got 'rms'"):
        VisionAttention(_config(), 12, 3, qk_norm="rms")


def test_attention_biases_and_affine_norms_follow_the_options():
    attention = VisionAttention(_config(), 8, 2, qkv_bias=False, qk_norm="layernorm")
    assert attention.q_proj.bias is None and attention.v_proj.bias is None and attention.out_proj.bias is not None
    assert attention.q_norm.weight is None and attention.head_dim == 4
    affine = VisionAttention(_config(), 8, 2, qk_norm="layernorm_affine", scaling=0.25)
    assert affine.q_norm.weight.shape == (4,) and affine.k_norm.bias.shape == (4,) and affine.scaling == 0.25


def test_mlp_layer_scale_and_encoder_layer_formulas():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6)
    mlp = VisionMLP(6, 10, hidden_act="gelu")
    torch.testing.assert_close(mlp(x), mlp.fc2(F.gelu(mlp.fc1(x))))
    gated = VisionMLP(6, 10, hidden_act="silu", gated=True, bias=False)
    assert gated.fc1.bias is None and gated.fc3 is not None
    torch.testing.assert_close(gated(x), gated.fc2(F.silu(gated.fc1(x)) * gated.fc3(x)))
    scale = LayerScale(6, 0.3)
    torch.testing.assert_close(scale(x), 0.3 * x)
    layer = VisionEncoderLayer(_config(), 6, 2, 10, layer_scale_init=0.5, layer_norm_eps=1e-3).eval()
    assert layer.norm1.eps == 1e-3
    with torch.no_grad():
        middle = x + 0.5 * layer.self_attn(layer.norm1(x))[0]
        expected = middle + 0.5 * layer.mlp(layer.norm2(middle))
        torch.testing.assert_close(layer(x), expected)
    plain = VisionEncoderLayer(_config(), 6, 2, 10, norm_affine=False, mlp_bias=False, out_bias=False)
    assert isinstance(plain.ls1, torch.nn.Identity) and plain.norm1.weight is None and plain.mlp.fc1.bias is None
    assert plain.self_attn.out_proj.bias is None


def test_init_common_weights():
    torch.manual_seed(0)
    linear, norm, embedding = torch.nn.Linear(400, 300), torch.nn.LayerNorm(7), torch.nn.Embedding(3, 2)
    with torch.no_grad():
        linear.bias.fill_(3.0), norm.weight.fill_(5.0), norm.bias.fill_(2.0)
    assert init_common_weights(linear, 0.02) and init_common_weights(norm, 0.02)
    assert not init_common_weights(embedding, 0.02)
    assert torch.equal(linear.bias, torch.zeros(300))
    assert abs(linear.weight.std().item() - 0.02) < 0.001 and linear.weight.abs().max() <= 2.0
    assert torch.equal(norm.weight, torch.ones(7)) and torch.equal(norm.bias, torch.zeros(7))
    conv = torch.nn.Conv2d(3, 4, 3, bias=False)
    assert init_common_weights(conv, 0.5) and abs(conv.weight.std().item() - 0.5) < 0.2
    group = torch.nn.GroupNorm(2, 4)
    with torch.no_grad():
        group.weight.fill_(0.0)
    assert init_common_weights(group, 0.02) and torch.equal(group.weight, torch.ones(4))


def test_resample_abs_pos_embed_matches_bicubic_antialiased_interpolation():
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(1 + 2 * 3, 5, generator=generator)   # a class token and a 2x3 grid
    resized = resample_abs_pos_embed(table, (4, 5), old_size=(2, 3), num_prefix_tokens=1)
    grid = table[1:].reshape(1, 2, 3, 5).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(4, 5), mode="bicubic", align_corners=False, antialias=True)
    assert resized.shape == (1 + 20, 5) and torch.equal(resized[0], table[0])
    torch.testing.assert_close(resized[1:], expected.permute(0, 2, 3, 1).reshape(20, 5))
    # batched [1, L, D] input, square default old size, dtype kept
    batched = torch.randn(1, 9, 4, generator=generator).bfloat16()
    out = resample_abs_pos_embed(batched, (2, 2))
    assert out.shape == (1, 4, 4) and out.dtype == torch.bfloat16
    expected = F.interpolate(batched.float().reshape(1, 3, 3, 4).permute(0, 3, 1, 2), size=(2, 2), mode="bicubic",
                             align_corners=False, antialias=True).permute(0, 2, 3, 1).reshape(1, 4, 4)
    torch.testing.assert_close(out.float(), expected, atol=1e-2, rtol=1e-2)
    assert resample_abs_pos_embed(batched, (3, 3)) is batched
