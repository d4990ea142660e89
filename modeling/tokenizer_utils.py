"""The tokenizer API shared by every vistok visual tokenizer (diffusers-autoencoder style).

``encode(pixel_values) -> TokenizerEncoderOutput``, ``decode(tokens_or_latents) -> TokenizerDecoderOutput``,
``forward(pixel_values) = decode(encode(pixel_values))`` plus a loss when ``labels`` are given. A model subclasses
``VisualTokenizerMixin`` (before ``PreTrainedModel``) and implements ``_encode``, ``_decode`` and, for discrete
tokenizers, ``tokens_to_latents``.
"""

import functools
import inspect
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


@dataclass(frozen=True)
class TokenizerLayout:
    r"""
    What a tokenizer takes and produces; each model declares it once (`VisualTokenizerMixin.layout`), and every
    input check and error message is derived from it.

    Args:
        inputs (`tuple[str, ...]`): `"image"` (pixel values `[B, C, H, W]`) and/or `"video"` (`[B, T, C, H, W]`,
            transformers' video layout).
        tokens (`str`): `"1d"` (ids `[B, N]`, latents `[B, N, D]`) or `"grid"` (ids `[B, h, w]` for an image,
            `[B, t, h, w]` for a video).
        num_channels (`int`): channels of the pixel values.
        image_size (`tuple[int, int]`, *optional*): the (height, width) every input must have; `None` when the model
            accepts other sizes (it then checks them in `validate_input_size`).
        num_tokens (`int`, *optional*): 1D tokens per item that `decode` requires; `None` when any count from 1 to
            `max_tokens` is accepted (variable-length tokenizers).
        max_tokens (`int`, *optional*): the most 1D tokens per item (defaults to `num_tokens`).
        vocab_size (`int`, *optional*): number of token ids; `None` for continuous tokenizers.
        latent_dim (`int`, *optional*): last dimension of the latents `decode` takes.
    """

    inputs: tuple = ("image",)
    tokens: str = "1d"
    num_channels: int = 3
    image_size: tuple | None = None
    num_tokens: int | None = None
    max_tokens: int | None = None
    vocab_size: int | None = None
    latent_dim: int | None = None

    def __post_init__(self):
        if not self.inputs or set(self.inputs) - {"image", "video"}:
            raise ValueError(f"inputs must be 'image' and/or 'video', got {self.inputs}.")
        if self.tokens not in ("1d", "grid"):
            raise ValueError(f"tokens must be '1d' or 'grid', got {self.tokens!r}.")

    @property
    def item(self) -> str:
        """What one batch item is, for messages: "image", "video" or "image or video"."""
        return " or ".join(self.inputs)

    @property
    def pixel_shapes(self) -> str:
        shapes = {"image": "[batch, channels, height, width]", "video": "[batch, frames, channels, height, width]"}
        return " or ".join(shapes[name] for name in self.inputs)

    @property
    def token_ndims(self) -> dict[int, str]:
        """Accepted token ranks -> their layout."""
        if self.tokens == "1d":
            return {2: "[batch, num_tokens]"}
        ndims = {}
        if "image" in self.inputs:
            ndims[3] = "[batch, height, width]"
        if "video" in self.inputs:
            ndims[4] = "[batch, frames, height, width]"
        return ndims


def _bad_items(values: torch.Tensor) -> list[int]:
    return (~torch.isfinite(values)).flatten(1).any(1).nonzero().flatten().tolist()


def check_finite(values: torch.Tensor, name: str) -> None:
    """Raises a ValueError naming the batch items of `values` that hold NaN or inf (one reduction when all are
    finite)."""
    if values.is_meta or not values.is_floating_point():
        return
    if not bool(torch.isfinite(values).all()):
        items = _bad_items(values)
        found = sorted({kind for kind, bad in (("NaN", values.isnan()), ("inf", values.isinf())) if bool(bad.any())})
        raise ValueError(
            f"{name} holds non-finite values ({' and '.join(found)}) in batch item(s) {items}; every value must be "
            "finite (check the image loading and preprocessing)."
        )


def _check_batch(values: torch.Tensor, name: str) -> None:
    if values.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(values.shape)}); pass at least one item.")


class VisualTokenizerMixin:
    """``encode``/``decode``/``forward`` with input validation, shared by all vistok tokenizers.

    Subclasses declare ``layout`` (a `TokenizerLayout`) and implement:
      * ``_encode(pixel_values, **kwargs) -> TokenizerEncoderOutput``
      * ``_decode(latents, **kwargs) -> TokenizerDecoderOutput`` (latents as in ``TokenizerEncoderOutput.latents``)
      * ``tokens_to_latents(tokens) -> latents`` for discrete tokenizers (``layout.vocab_size`` set)
    and may override ``validate_input_size`` (models that accept more than one input size; their `layout` has
    ``image_size=None``) and ``_forward_decode_defaults`` (decode arguments that ``forward`` derives from the
    encoding, e.g. the output size of such models).

    Every entry point rejects what would give a silent wrong result with a ValueError naming the tensor, the items
    and expected vs got: non-tensors, wrong dtypes or ranks, empty batches, wrong channels/sizes/token counts, token
    ids out of range, and NaN/inf pixels or latents. Integer ids of any integer dtype are accepted (cast to int64);
    boolean tensors are refused.
    """

    #: weight of the quantizer loss added to the reconstruction loss in ``forward``
    quantization_loss_weight = 1.0
    #: ``forward``'s ``**decode_kwargs`` are decoder arguments, not loss arguments: without this, ``Trainer`` sees
    #: the var-keyword and passes ``num_items_in_batch``, which the decoders reject
    accepts_loss_kwargs = False

    @property
    def layout(self) -> TokenizerLayout:
        raise NotImplementedError(f"{type(self).__name__} must declare its `layout` (a TokenizerLayout).")

    @property
    def num_tokens(self) -> int | None:
        return self.layout.num_tokens

    @property
    def expected_image_size(self) -> tuple[int, int] | None:
        """The (height, width) every input must have, or None when the model accepts several sizes."""
        return self.layout.image_size

    @property
    def vocab_size(self) -> int | None:
        return self.layout.vocab_size

    def validate_input_size(self, height: int, width: int) -> None:
        """Checks one input's spatial size against `layout.image_size`; override to accept more sizes."""
        expected = self.layout.image_size
        if expected is not None and (height, width) != tuple(expected):
            raise ValueError(
                f"pixel_values must be {expected[0]}x{expected[1]} images, got {height}x{width}; resize and crop "
                "with the model's image processor."
            )

    def validate_pixel_values(self, pixel_values) -> None:
        layout = self.layout
        if not isinstance(pixel_values, torch.Tensor):
            raise ValueError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}.")
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be a floating point tensor, got dtype {pixel_values.dtype}; use the image "
                "processor (or `.float()` and scale to the model's input range) first."
            )
        ranks = {4: "image", 5: "video"}
        if ranks.get(pixel_values.ndim) not in layout.inputs:
            raise ValueError(f"pixel_values must have shape {layout.pixel_shapes}, got {tuple(pixel_values.shape)}.")
        _check_batch(pixel_values, "pixel_values")
        channels = pixel_values.shape[-3]
        if channels != layout.num_channels:
            raise ValueError(
                f"pixel_values must have {layout.num_channels} channels in dimension {pixel_values.ndim - 3}, got "
                f"{channels} (shape {tuple(pixel_values.shape)}); channels-last input must be permuted first."
            )
        self.validate_input_size(pixel_values.shape[-2], pixel_values.shape[-1])
        check_finite(pixel_values, "pixel_values")

    def validate_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Checks token ids and returns them as int64."""
        layout = self.layout
        if tokens.dtype == torch.bool or tokens.is_floating_point() or tokens.is_complex():
            raise ValueError(f"token ids must be an integer tensor, got dtype {tokens.dtype}.")
        if tokens.ndim not in layout.token_ndims:
            shapes = " or ".join(layout.token_ndims.values())
            raise ValueError(f"tokens must have shape {shapes}, got {tuple(tokens.shape)}.")
        _check_batch(tokens, "tokens")
        if layout.tokens == "1d":
            self._check_token_count(tokens.shape[1], f"tokens per {layout.item}", tuple(tokens.shape))
        vocab = layout.vocab_size
        if not tokens.is_meta:
            low, high = int(tokens.min()), int(tokens.max())
            if low < 0 or (vocab is not None and high >= vocab):
                raise ValueError(f"token ids must be in [0, {vocab}), got values in [{low}, {high}].")
        return tokens.long()

    def _check_token_count(self, count: int, name: str, shape: tuple) -> None:
        layout = self.layout
        if layout.num_tokens is not None and count != layout.num_tokens:
            raise ValueError(f"expected {layout.num_tokens} {name}, got {count} (shape {shape}).")
        maximum = layout.max_tokens or layout.num_tokens
        if layout.num_tokens is None and maximum is not None and not 1 <= count <= maximum:
            raise ValueError(f"{type(self).__name__} takes 1 to {maximum} tokens per {layout.item} (any prefix), "
                             f"got {count} {name.split(' per ')[0]} (shape {shape}).")

    def validate_latents(self, latents: torch.Tensor) -> None:
        layout = self.layout
        if layout.tokens == "1d":
            if latents.ndim != 3:
                raise ValueError(
                    f"latents must have shape [batch, num_tokens, latent_dim], got {tuple(latents.shape)}."
                )
            self._check_token_count(latents.shape[1], "latent tokens", tuple(latents.shape))
            if layout.latent_dim is not None and latents.shape[-1] != layout.latent_dim:
                raise ValueError(
                    f"latents must have {layout.latent_dim} channels in their last dimension, got "
                    f"{latents.shape[-1]} (shape {tuple(latents.shape)})."
                )
        _check_batch(latents, "latents")
        check_finite(latents, "latents")

    @apply_forward_hook
    def encode(self, pixel_values: torch.Tensor, return_dict: bool = True, **kwargs):
        """Encodes images [B, C, H, W] or videos [B, T, C, H, W] (in the range the processor produces) into
        tokens/latents (see `layout`)."""
        self.validate_pixel_values(pixel_values)
        output = self._encode(pixel_values, **kwargs)
        return output if return_dict else output.to_tuple()

    def _to_latents(self, tokens_or_latents) -> torch.Tensor:
        if not isinstance(tokens_or_latents, torch.Tensor):
            raise ValueError(f"decode expects a torch.Tensor, got {type(tokens_or_latents).__name__}.")
        if tokens_or_latents.is_floating_point():
            self.validate_latents(tokens_or_latents)
            return tokens_or_latents
        if self.vocab_size is None:
            raise ValueError(
                f"{type(self).__name__} is a continuous tokenizer: decode takes float latents, got integer tensor of "
                f"dtype {tokens_or_latents.dtype}."
            )
        return self.tokens_to_latents(self.validate_tokens(tokens_or_latents))

    @apply_forward_hook
    def decode(self, tokens_or_latents: torch.Tensor, return_dict: bool = True, **kwargs):
        """Decodes token ids (an integer tensor, looked up in the codebook) or latents (a float tensor, used as they
        are) into pixel values in the input layout."""
        output = self._decode(self._to_latents(tokens_or_latents), **kwargs)
        return output if return_dict else output.to_tuple()

    @property
    def decode_parameters(self) -> set[str]:
        """Keyword arguments that `decode` passes on to the decoder (e.g. `generator`, `num_steps`)."""
        parameters = inspect.signature(self._decode).parameters
        return {name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD}

    def _forward_decode_defaults(self, encoded: TokenizerEncoderOutput) -> dict:
        """Decode arguments `forward` derives from the encoding (explicit `forward` arguments win); none by default."""
        return {}

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
        decoded = self._decode(encoded.latents, **{**self._forward_decode_defaults(encoded), **decode_kwargs})
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
