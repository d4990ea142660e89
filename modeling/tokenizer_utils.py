"""The tokenizer API shared by every vistok visual tokenizer (diffusers-autoencoder style).

``encode(pixel_values) -> TokenizerEncoderOutput``, ``decode(tokens_or_latents) -> TokenizerDecoderOutput``,
``forward(pixel_values) = decode(encode(pixel_values))`` plus a loss when ``labels`` are given. A model subclasses
``VisualTokenizerMixin`` (before ``PreTrainedModel``) and implements ``_encode``, ``_decode`` and, for discrete
tokenizers, ``tokens_to_latents``.
"""

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput


def apply_forward_hook(method):
    """Runs accelerate's hook of ``self`` around a public entry point that is not ``forward`` (``encode``/``decode``),
    so offloaded weights are loaded and inputs moved to the execution device, as for a ``forward`` call."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        hook = getattr(self, "_hf_hook", None)
        if hook is not None and hasattr(hook, "pre_forward"):
            args, kwargs = hook.pre_forward(self, *args, **kwargs)
        output = method(self, *args, **kwargs)
        if hook is not None and hasattr(hook, "post_forward"):
            output = hook.post_forward(self, output)
        return output

    return wrapper


@dataclass
class TokenizerEncoderOutput(ModelOutput):
    r"""
    latents (`torch.FloatTensor` of shape `(batch_size, num_tokens, latent_dim)` for 1D tokenizers):
        What the decoder consumes: quantized values for VQ/FSQ, the posterior mean for VAE variants, the continuous
        latents for continuous tokenizers.
    tokens (`torch.LongTensor` of shape `(batch_size, num_tokens)`, *optional*):
        Token ids of discrete tokenizers; `None` for continuous ones.
    encoder_output (`torch.FloatTensor`, *optional*):
        Continuous encoder output before quantization (for VAE variants: mean and log-variance concatenated).
    posterior_logvar (`torch.FloatTensor`, *optional*):
        Clamped log-variance of VAE posteriors, same shape as `latents`.
    quantization_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Codebook + commitment loss (VQ) or KL (VAE), only in training mode.
    """

    latents: torch.FloatTensor | None = None
    tokens: torch.LongTensor | None = None
    encoder_output: torch.FloatTensor | None = None
    posterior_logvar: torch.FloatTensor | None = None
    quantization_loss: torch.FloatTensor | None = None


@dataclass
class TokenizerDecoderOutput(ModelOutput):
    r"""
    reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
        Decoded images in the model's input range, not clamped.
    """

    reconstruction: torch.FloatTensor | None = None


@dataclass
class TokenizerModelOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given):
        Reconstruction loss plus the weighted quantization loss.
    latents (`torch.FloatTensor` of shape `(batch_size, num_tokens, latent_dim)`):
        The latents the reconstruction was decoded from (first, so feature-extraction pipelines return them).
    reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
        Decoded images in the model's input range, not clamped.
    tokens (`torch.LongTensor` of shape `(batch_size, num_tokens)`, *optional*):
        Token ids of discrete tokenizers.
    quantization_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Quantizer loss in training mode.
    """

    loss: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    tokens: torch.LongTensor | None = None
    quantization_loss: torch.FloatTensor | None = None


class VisualTokenizerMixin:
    """``encode``/``decode``/``forward`` with input validation, shared by all vistok tokenizers.

    Subclasses implement:
      * ``_encode(pixel_values, **kwargs) -> TokenizerEncoderOutput``
      * ``_decode(latents, **kwargs) -> TokenizerDecoderOutput`` (latents as in ``TokenizerEncoderOutput.latents``)
      * ``tokens_to_latents(tokens) -> latents`` for discrete tokenizers (``config.codebook_size`` set)
    and may override ``expected_image_size`` / ``num_tokens`` / ``validate_tokens``.
    """

    #: weight of the quantizer loss added to the reconstruction loss in ``forward``
    quantization_loss_weight = 1.0
    #: ``forward``'s ``**decode_kwargs`` are decoder arguments, not loss arguments: without this, ``Trainer`` sees
    #: the var-keyword and passes ``num_items_in_batch``, which the decoders reject
    accepts_loss_kwargs = False

    @property
    def expected_image_size(self) -> tuple[int, int] | None:
        size = getattr(self.config, "image_size", None)
        if size is None:
            return None
        return (size, size) if isinstance(size, int) else tuple(size)

    @property
    def num_tokens(self) -> int | None:
        return getattr(self.config, "num_latent_tokens", None)

    @property
    def vocab_size(self) -> int | None:
        return getattr(self.config, "codebook_size", None)

    def validate_pixel_values(self, pixel_values) -> None:
        if not isinstance(pixel_values, torch.Tensor):
            raise ValueError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}.")
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be a floating point tensor, got dtype {pixel_values.dtype}; use the image "
                "processor (or `.float()` and scale to the model's input range) first."
            )
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must have shape [batch, channels, height, width], got {tuple(pixel_values.shape)}."
            )
        channels = getattr(self.config, "num_channels", 3)
        if pixel_values.shape[1] != channels:
            raise ValueError(
                f"pixel_values must have {channels} channels in dimension 1, got {pixel_values.shape[1]} "
                f"(shape {tuple(pixel_values.shape)}); channels-last input must be permuted first."
            )
        expected = self.expected_image_size
        if expected is not None and tuple(pixel_values.shape[-2:]) != expected:
            raise ValueError(
                f"pixel_values must be {expected[0]}x{expected[1]} images, got {pixel_values.shape[-2]}x"
                f"{pixel_values.shape[-1]}; resize and crop with the model's image processor."
            )

    def validate_tokens(self, tokens: torch.Tensor) -> None:
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape [batch, num_tokens], got {tuple(tokens.shape)}.")
        expected = self.num_tokens
        if expected is not None and tokens.shape[1] != expected:
            raise ValueError(f"expected {expected} tokens per image, got {tokens.shape[1]} (shape {tuple(tokens.shape)}).")
        vocab = self.vocab_size
        if tokens.numel() and (int(tokens.min()) < 0 or (vocab is not None and int(tokens.max()) >= vocab)):
            raise ValueError(
                f"token ids must be in [0, {vocab}), got values in [{int(tokens.min())}, {int(tokens.max())}]."
            )

    def validate_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 3:
            raise ValueError(f"latents must have shape [batch, num_tokens, latent_dim], got {tuple(latents.shape)}.")
        expected = self.num_tokens
        if expected is not None and latents.shape[1] != expected:
            raise ValueError(f"expected {expected} latent tokens, got {latents.shape[1]} (shape {tuple(latents.shape)}).")

    @apply_forward_hook
    def encode(self, pixel_values: torch.Tensor, return_dict: bool = True, **kwargs):
        """Encodes images [B, C, H, W] (in the range the image processor produces) into tokens/latents."""
        self.validate_pixel_values(pixel_values)
        output = self._encode(pixel_values, **kwargs)
        return output if return_dict else output.to_tuple()

    @apply_forward_hook
    def decode(self, tokens_or_latents: torch.Tensor, return_dict: bool = True, **kwargs):
        """Decodes token ids (LongTensor [B, N], looked up in the codebook) or latents (FloatTensor [B, N, D], used
        as they are) into images [B, C, H, W]."""
        if not isinstance(tokens_or_latents, torch.Tensor):
            raise ValueError(f"decode expects a torch.Tensor, got {type(tokens_or_latents).__name__}.")
        if tokens_or_latents.is_floating_point():
            self.validate_latents(tokens_or_latents)
            latents = tokens_or_latents
        else:
            if self.vocab_size is None:
                raise ValueError(
                    f"{type(self).__name__} is a continuous tokenizer: decode takes float latents, got integer "
                    f"tensor of dtype {tokens_or_latents.dtype}."
                )
            self.validate_tokens(tokens_or_latents)
            latents = self.tokens_to_latents(tokens_or_latents)
        output = self._decode(latents, **kwargs)
        return output if return_dict else output.to_tuple()

    def tokens_to_latents(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no codebook.")

    def reconstruction_loss(self, reconstruction: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.shape != reconstruction.shape:
            raise ValueError(
                f"labels must have the reconstruction's shape {tuple(reconstruction.shape)}, got {tuple(labels.shape)}."
            )
        return F.mse_loss(reconstruction.float(), labels.float())

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, return_dict: bool = True, **decode_kwargs
    ):
        """Reconstructs ``pixel_values``. With ``labels`` (target images, usually ``pixel_values`` itself) also
        returns ``loss`` = MSE(reconstruction, labels) + ``quantization_loss_weight`` x quantizer loss."""
        self.validate_pixel_values(pixel_values)
        encoded = self._encode(pixel_values)
        decoded = self._decode(encoded.latents, **decode_kwargs)
        loss = None
        if labels is not None:
            loss = self.reconstruction_loss(decoded.reconstruction, labels)
            if encoded.quantization_loss is not None:
                loss = loss + self.quantization_loss_weight * encoded.quantization_loss
        output = TokenizerModelOutput(
            loss=loss,
            latents=encoded.latents,
            reconstruction=decoded.reconstruction,
            tokens=encoded.tokens,
            quantization_loss=encoded.quantization_loss,
        )
        return output if return_dict else output.to_tuple()
