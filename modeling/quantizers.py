"""Quantizers shared by the vistok tokenizers: vector quantization, finite scalar quantization and the diagonal
Gaussian posterior of VAE-style tokenizers.

Every quantizer computes in float32 whatever the model dtype (list the module in ``_keep_in_fp32_modules`` so the
codebook itself also stays in float32 when a model is loaded in half precision).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .tokenizer_utils import apply_forward_hook


@dataclass
class QuantizerOutput:
    """``quantized``: [..., D] values the decoder consumes (straight-through in training); ``indices``: [...] int64
    ids (None for continuous posteriors); ``loss``: scalar quantization loss (None when not training)."""

    quantized: torch.Tensor
    indices: torch.Tensor | None = None
    loss: torch.Tensor | None = None


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantizer over a learned codebook.

    Args:
        num_embeddings: codebook size (the vocabulary of the tokenizer).
        embedding_dim: dimension of a code vector.
        use_l2_norm: l2-normalise inputs and codebook before the search; lookups then return normalised vectors.
        commitment_cost: weight of the commitment term of the training loss.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, use_l2_norm: bool = False, commitment_cost: float = 0.25):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.use_l2_norm = use_l2_norm
        self.commitment_cost = commitment_cost
        # a direct parameter (not an nn.Embedding child): accelerate's offload hooks then load it for `forward` and
        # `lookup`, which both read the whole table
        self.embedding = nn.Parameter(torch.empty(num_embeddings, embedding_dim))

    def codebook(self) -> torch.Tensor:
        weight = self.embedding.float()
        return F.normalize(weight, dim=-1) if self.use_l2_norm else weight

    def forward(self, latents: torch.Tensor) -> QuantizerOutput:
        """``latents``: [..., embedding_dim] -> quantized [..., embedding_dim] (float32), indices [...]."""
        if latents.shape[-1] != self.embedding_dim:
            raise ValueError(
                f"VectorQuantizer expects latents with last dimension {self.embedding_dim}, got {tuple(latents.shape)}."
            )
        z = latents.float()
        if self.use_l2_norm:
            z = F.normalize(z, dim=-1)
        codebook = self.codebook()
        flat = z.reshape(-1, self.embedding_dim)
        distances = (
            flat.pow(2).sum(dim=1, keepdim=True) + codebook.pow(2).sum(dim=1) - 2 * torch.matmul(flat, codebook.t())
        )
        indices = distances.argmin(dim=1).view(z.shape[:-1])
        return self.quantizer_output(z, indices, codebook)

    def quantizer_output(self, z: torch.Tensor, indices: torch.Tensor, codebook: torch.Tensor) -> QuantizerOutput:
        """Looks ``indices`` up in ``codebook``; in training adds the commitment + codebook loss and passes gradients
        straight through to ``z`` (the float32, possibly normalised, quantizer input)."""
        quantized = F.embedding(indices, codebook)
        loss = None
        if self.training:
            commitment = torch.mean((quantized.detach() - z) ** 2)
            codebook_loss = torch.mean((quantized - z.detach()) ** 2)
            loss = self.commitment_cost * commitment + codebook_loss
            quantized = z + (quantized - z).detach()
        return QuantizerOutput(quantized=quantized, indices=indices, loss=loss)

    @apply_forward_hook
    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """[...] int64 ids -> [..., embedding_dim] float32 code vectors (normalised when ``use_l2_norm``)."""
        return F.embedding(indices, self.codebook())


class FiniteScalarQuantizer(nn.Module):
    """Finite scalar quantization (Mentzer et al., 2023): each of ``len(levels)`` channels is bounded and rounded to
    ``levels[i]`` values in [-1, 1]; a token id is the mixed-radix number of the per-channel digits, the first
    channel being the least significant digit. Has no parameters.

    Args:
        levels: number of values per channel, e.g. ``[8, 8, 8, 5, 5, 5]`` for a 64,000-token vocabulary.
        eps: margin that keeps the bounded values strictly inside the rounding range.
    """

    def __init__(self, levels: list[int], eps: float = 1e-3):
        super().__init__()
        self.levels = list(levels)
        self.eps = eps
        # plain Python: this also runs under the meta device of `from_pretrained`, where `.item()` fails
        self.codebook_size = math.prod(self.levels)

    @property
    def embedding_dim(self) -> int:
        return len(self.levels)

    def _constants(self, device):
        levels = torch.tensor(self.levels, dtype=torch.float32, device=device)
        basis = torch.cumprod(torch.tensor([1] + self.levels[:-1], dtype=torch.int64, device=device), dim=0)
        return levels, basis

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        levels, _ = self._constants(z.device)
        half_l = (levels - 1) * (1 + self.eps) / 2
        offset = torch.where(levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, latents: torch.Tensor) -> QuantizerOutput:
        """``latents``: [..., len(levels)] -> codes in [-1, 1] (float32, straight-through rounding) and ids [...]."""
        if latents.shape[-1] != len(self.levels):
            raise ValueError(f"FSQ expects latents with last dimension {len(self.levels)}, got {tuple(latents.shape)}.")
        levels, basis = self._constants(latents.device)
        bounded = self.bound(latents.float())
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        half_width = torch.div(levels, 2, rounding_mode="floor")
        codes = rounded / half_width
        digits = (torch.round(bounded) + half_width).long()
        indices = (digits * basis).sum(dim=-1)
        return QuantizerOutput(quantized=codes, indices=indices, loss=None)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """[...] int64 ids -> [..., len(levels)] codes in [-1, 1]."""
        levels, basis = self._constants(indices.device)
        half_width = torch.div(levels, 2, rounding_mode="floor")
        digits = torch.div(indices[..., None], basis, rounding_mode="floor") % levels.long()
        return (digits.float() - half_width) / half_width


class DiagonalGaussianDistribution:
    """Posterior of VAE tokenizers. ``parameters`` holds mean and log-variance concatenated along ``dim``; the
    log-variance is clamped to [-30, 20]. Computes in float32."""

    def __init__(self, parameters: torch.Tensor, dim: int = -1):
        self.mean, logvar = torch.chunk(parameters.float(), 2, dim=dim)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to the standard normal, summed over all but the batch dimension: [B]."""
        kl = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return kl.flatten(1).sum(dim=1)
