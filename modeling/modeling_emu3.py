"""The Emu3 vision tokenizer (BAAI/Emu3-VisionTokenizer) behind the vistok tokenizer API.

transformers already implements the network as `Emu3VQVAE` (config `Emu3VQVAEConfig`, model type `emu3_vqgan`); this
module subclasses it without changing a single weight name, so a converted checkpoint also loads into transformers'
`Emu3VQVAE` and into `Emu3ForConditionalGeneration.model.vqmodel`. What the subclass adds:

* images **and videos**: `encode` takes `[B, 3, H, W]` or `[B, T, 3, H, W]` and returns grid tokens `[B, h, w]` /
  `[B, T // 4, h, w]` (no per-sample crop, so non-square videos and long clips keep every row and latent frame;
  transformers 5.24 crops video codes with the image size on the wrong axes);
* the image path computes each distinct frame once: the original repeats an image 4 times along time and runs the 2D
  encoder on every copy, and decodes 4 frames to return the first. Here the 2D encoder runs on one frame (the
  temporal layers, 4 channels wide, still see the 4 identical frames) and the 2D decoder only on the returned frame,
  with the same codes and pixels;
* batches of images of different sizes (a list, or a padded batch with `image_sizes` as `Emu3ImageProcessor` makes
  it): each image is encoded at its own size, so padding never changes its codes;
* loading with `dtype=torch.bfloat16` keeps the encoder, `quant_conv`, the codebook and `post_quant_conv` in float32
  (`_keep_in_fp32_modules_strict`), so the codes do not depend on the dtype; the decoder runs in bfloat16.

Clips whose frame count T is not a multiple of the temporal factor (4): the original's causal strided temporal
convolutions never read the last `T % 4` frames (latent frame i depends on frames `< 4 (i + 1)` only), so its codes
equal those of the first `4 * (T // 4)` frames. `encode` drops those frames explicitly (same codes, less work) and
warns; `decode` then returns `4 * (T // 4)` frames. Fewer than 4 frames is an error, as in the original.

The AR model (`Emu3Model`, `Emu3ForConditionalGeneration`): same-name subclasses of transformers' classes (model type
`emu3`, same weights, same saved files, see `TransformersNativeMixin`) whose `vqmodel` is an `Emu3VisionTokenizer`.
What they change, each a transformers 5.24 limitation:

* images of different sizes in one call (`Emu3ImageProcessor` pads them and returns `image_sizes`) are encoded each
  at its own size, so an image gets the same codes, and a prompt the same logits, alone or in any batch (transformers
  quantizes the zero-padded images and crops the codes afterwards);
* pixels that disagree with `image_sizes`, and placeholder counts that disagree with the images' token counts, raise
  a ValueError naming expected and got (transformers: a RuntimeError from `torch.split`, and a count of features
  times hidden size);
* `train()` leaves the frozen vision tokenizer in eval mode: the original trains the LLM only, on precomputed codes
  (the argmin gives the VQ no gradient), so its BatchNorm3d running statistics must not drift;
* the codebook is read through the embedding module's call, so `device_map` offload hooks load it.

On valid inputs of one size the codes, image embeddings, logits and generated ids are those of transformers' classes,
bit for bit; `decode_image_tokens` decodes with the tokenizer's one-frame image path (within a few 1e-6 of
transformers' pixels), and loading with `dtype=torch.bfloat16` keeps the code path in float32 (see above).
"""

import torch
from torch import nn
from transformers import Emu3Config, Emu3VQVAE, Emu3VQVAEConfig
from transformers.models.emu3 import modeling_emu3 as hf_emu3
from transformers.models.emu3.modeling_emu3 import Emu3VQVAEModelOutput, Emu3VQVAEVectorQuantizer
from transformers.utils import can_return_tuple, logging, torch_compilable_check

from .native_subclass import TransformersNativeMixin
from .tokenizer_utils import (
    TokenizerDecoderOutput,
    TokenizerEncoderOutput,
    TokenizerLayout,
    TokenizerModelOutput,
    VisualTokenizerMixin,
    apply_forward_hook,
)


logger = logging.get_logger(__name__)


class Emu3VisionTokenizerQuantizer(Emu3VQVAEVectorQuantizer):
    """transformers' nearest-neighbour quantizer, reading the codebook only through calls of `embedding`, so that
    accelerate's offload hooks (attached to that leaf) load it in both directions. Same parameters
    (`embedding.weight`), same distances as the original (`|z|^2 + |e|^2 - 2 z.e`, argmin)."""

    rows_per_chunk = 1024

    def forward(self, hidden_state: torch.Tensor | None = None, codes: torch.LongTensor | None = None):
        """`hidden_state` [B, t, D, h, w] -> codes [B, t, h, w] (in the codebook's dtype, float32 by default);
        or `codes` [...] -> codebook vectors [..., D]."""
        if codes is not None:
            return self.embedding(codes)
        codebook = self.embedding(torch.arange(self.embedding.num_embeddings, device=hidden_state.device))
        batch_size, frames, channels, height, width = hidden_state.shape
        flat = hidden_state.to(codebook.dtype).permute(0, 1, 3, 4, 2).reshape(-1, channels)
        codebook_norms = codebook.pow(2).sum(1)
        codes = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
        # rows in chunks: a [rows, codebook_size] distance matrix is 0.5 GB for one 512x512 image at once
        for start in range(0, flat.shape[0], self.rows_per_chunk):
            rows = flat[start:start + self.rows_per_chunk]
            distances = torch.addmm(rows.pow(2).sum(1, keepdim=True) + codebook_norms, rows, codebook.t(), alpha=-2)
            codes[start:start + self.rows_per_chunk] = distances.argmin(dim=1)
        return codes.view(batch_size, frames, height, width)


class Emu3VisionTokenizer(VisualTokenizerMixin, Emu3VQVAE):
    r"""
    Emu3 vision tokenizer: SBER-MoVQGAN 2D conv VQGAN with causal temporal layers, 8x spatial (`2 ** (len(
    channel_multiplier) - 1)`) and 4x temporal (`temporal_downsample_factor`) compression, 32768 codes.

    Input: pixels in [-1, 1] (the image/video processor's output), H and W multiples of the spatial factor `s` (other
    sizes of at least `s` are accepted as by the original: the grid is `H // s x W // s`, see `validate_input_size`).

    | input | `tokens` | `latents` (codebook vectors) | `reconstruction` |
    |---|---|---|---|
    | image `[B, 3, H, W]` | `[B, h, w]` | `[B, D, h, w]` | `[B, 3, H, W]` |
    | video `[B, T, 3, H, W]` | `[B, T // 4, h, w]` | `[B, T // 4, D, h, w]` | `[B, 4 (T // 4), 3, H, W]` |
    | list of `[3, H_i, W_i]` (or padded batch + `image_sizes`) | list of `[h_i, w_i]` | list of `[D, h_i, w_i]` | list |

    `encoder_output` holds the pre-quantization latents (the argmin input) in the layout of `latents`.

    Example:
    ```python
    >>> model = Emu3VisionTokenizer(Emu3VQVAEConfig())
    >>> model.encode(torch.rand(1, 3, 512, 512) * 2 - 1).tokens.shape          # [1, 64, 64]
    >>> model.encode(torch.rand(1, 8, 3, 256, 384) * 2 - 1).tokens.shape       # [1, 2, 32, 48]
    ```
    """

    supports_gradient_checkpointing = True
    # codes must not depend on the load dtype (datasets of tokens, AR training): everything up to the argmin stays
    # float32 under `from_pretrained(dtype=torch.bfloat16)`; `.to(torch.bfloat16)` still casts it all for speed
    _keep_in_fp32_modules_strict = ["encoder", "quant_conv", "quantize", "post_quant_conv"]
    _no_split_modules = Emu3VQVAE._no_split_modules + ["Emu3VisionTokenizerQuantizer"]

    #: keep the released BatchNorm3d running statistics in `train()` (see `train`)
    freeze_batch_norm_statistics = True

    def __init__(self, config: Emu3VQVAEConfig):
        super().__init__(config)
        quantizer = Emu3VisionTokenizerQuantizer(config)
        quantizer.embedding.weight = self.quantize.embedding.weight
        self.quantize = quantizer
        self._fit_attention_widths()
        self.gradient_checkpointing = False

    def _fit_attention_widths(self) -> None:
        """Gives every attention block the channel count of its level. transformers' `Emu3VQVAE` builds them all
        `hidden_size` wide (the middle block's width, 1024 in the release, where attention sits at the last level
        only); the original builds each at its level's width, so attention at a narrower level (e.g.
        `attn_resolutions=[0]` with `channel_multiplier=[1, 2]`) exists there and is supported here (such a
        checkpoint then does not load into transformers' own `Emu3VQVAE`)."""
        config = self.config
        widths = [config.base_channels * multiplier for multiplier in config.channel_multiplier]
        levels = [(self.encoder.down_block.down[i], widths[i]) for i in range(len(widths))]
        levels += [(self.decoder.up_block.up[i], widths[i]) for i in range(len(widths))]
        levels += [(block, widths[-1]) for block in (self.encoder.middle_block, self.decoder.middle_block)]
        for level, width in levels:
            blocks = level.attn if hasattr(level, "attn") else [level.attn_1]
            for block in blocks:
                if block.embed_dim == width:
                    continue
                block.embed_dim, block.head_dim = width, width // block.num_heads
                block.scale = block.head_dim**-0.5
                for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
                    setattr(block, name, nn.Linear(width, width))

    def train(self, mode: bool = True):
        """Training mode everywhere except the temporal BatchNorm3d layers when `freeze_batch_norm_statistics`: their
        running statistics belong to the release and are not saved by adapters (LoRA), so fine-tuning keeps them."""
        super().train(mode)
        if self.freeze_batch_norm_statistics:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm3d):
                    module.eval()
        return self

    @classmethod
    def from_vqvae(cls, vqvae: Emu3VQVAE) -> "Emu3VisionTokenizer":
        """Wraps the weights of a transformers `Emu3VQVAE` (e.g. `Emu3ForConditionalGeneration.model.vqmodel`, to
        decode generated codes) without copying them."""
        with torch.device("meta"):
            tokenizer = cls(vqvae.config)
        tokenizer.load_state_dict(vqvae.state_dict(), assign=True, strict=True)
        return tokenizer.eval()

    # ---------------------------------------------------------------- layouts and validation
    @property
    def spatial_factor(self) -> int:
        return self.spatial_scale_factor

    @property
    def temporal_factor(self) -> int:
        return self.config.temporal_downsample_factor

    @property
    def layout(self) -> TokenizerLayout:
        config = self.config
        return TokenizerLayout(
            inputs=("image", "video"), tokens="grid", num_channels=config.in_channels, vocab_size=config.codebook_size
        )

    def validate_input_size(self, height: int, width: int) -> None:
        """Any size of at least the spatial factor: like the original, each stride-2 downsampling (right/bottom
        zero pad of 1, 3x3 conv) maps a side n to n // 2, so the token grid is `H // s x W // s` and the
        reconstruction `s (H // s) x s (W // s)` (the processor's smart resize gives multiples of s)."""
        factor = self.spatial_factor
        if height < factor or width < factor:
            raise ValueError(
                f"pixel_values height and width must be at least the spatial factor {factor} (the original's "
                f"downsampling fails below), got {height}x{width}."
            )

    def validate_pixel_values(self, pixel_values) -> None:
        super().validate_pixel_values(pixel_values)
        if pixel_values.ndim == 5 and pixel_values.shape[1] < self.temporal_factor:
            raise ValueError(
                f"videos need at least {self.temporal_factor} frames (the temporal factor), got "
                f"{pixel_values.shape[1]} (shape {tuple(pixel_values.shape)}); encode single frames as images."
            )

    def validate_latents(self, latents: torch.Tensor) -> None:
        """Grid latents: codebook vectors `[B, D, h, w]` (image) or `[B, t, D, h, w]` (video)."""
        if latents.ndim not in (4, 5):
            raise ValueError(
                "latents must have shape [batch, embed_dim, height, width] (image) or [batch, frames, embed_dim, "
                f"height, width] (video), got {tuple(latents.shape)}."
            )
        if latents.shape[-3] != self.config.embed_dim:
            raise ValueError(
                f"latents must have embed_dim={self.config.embed_dim} channels in dimension {latents.ndim - 3}, got "
                f"{latents.shape[-3]} (shape {tuple(latents.shape)})."
            )
        super().validate_latents(latents)

    # ---------------------------------------------------------------- public entry points (ragged batches)
    @apply_forward_hook
    def encode(self, pixel_values, image_sizes=None, return_dict: bool = True, **kwargs):
        r"""
        Encodes images `[B, 3, H, W]` or videos `[B, T, 3, H, W]` in [-1, 1] into grid tokens (see the class table).

        Args:
            pixel_values (`torch.FloatTensor` or list of `[3, H_i, W_i]` tensors):
                Images/videos; a list holds images of different sizes.
            image_sizes (`torch.LongTensor` of shape `(batch_size, 2)`, *optional*):
                (height, width) of each image of a bottom/right-padded batch (`Emu3ImageProcessor(do_pad=True)`);
                when they differ from the batch size, each image is cropped out and encoded at its own size, and
                the outputs are lists.
            chunk_frames (`bool`, *optional*, defaults to `False`):
                Videos: encode every chunk of 4 frames as its own clip, as the official `autoencode.py` does, instead
                of the whole clip at once (causal temporal layers then see earlier chunks).
        """
        if self._is_ragged(pixel_values, image_sizes):
            images = self._split_images(pixel_values, image_sizes)
            output = self._encode_ragged(images, **kwargs)
        else:
            output = VisualTokenizerMixin.encode.__wrapped__(self, pixel_values, **kwargs)
        return output if return_dict else output.to_tuple()

    @apply_forward_hook
    def decode(self, tokens_or_latents, return_dict: bool = True, **kwargs):
        r"""
        Decodes token ids (`[B, h, w]` image, `[B, t, h, w]` video) or codebook vectors (`[B, D, h, w]`,
        `[B, t, D, h, w]`), or a list of per-image `[h_i, w_i]` ids / `[D, h_i, w_i]` vectors, into pixels in [-1, 1]
        (not clamped). `chunk_frames=True` decodes every latent frame as its own clip (the official `autoencode.py`).
        """
        if isinstance(tokens_or_latents, (list, tuple)):
            reconstructions = [
                VisualTokenizerMixin.decode.__wrapped__(self, item[None], **kwargs).reconstruction[0]
                for item in tokens_or_latents
            ]
            output = TokenizerDecoderOutput(reconstruction=reconstructions)
        else:
            output = VisualTokenizerMixin.decode.__wrapped__(self, tokens_or_latents, **kwargs)
        return output if return_dict else output.to_tuple()

    def forward(self, pixel_values, labels=None, return_dict: bool = True, image_sizes=None, **decode_kwargs):
        """`decode(encode(pixel_values))` (+ MSE loss with `labels`); `image_sizes` as in `encode` (outputs are then
        lists, and `labels` is not supported)."""
        if not self._is_ragged(pixel_values, image_sizes):
            return super().forward(pixel_values, labels=labels, return_dict=return_dict, **decode_kwargs)
        if labels is not None:
            raise ValueError("labels are not supported for images of different sizes; pass one size per call.")
        encoded = self._encode_ragged(self._split_images(pixel_values, image_sizes))
        decoded = self.decode(encoded.tokens, **decode_kwargs)
        output = TokenizerModelOutput(latents=encoded.latents, reconstruction=decoded.reconstruction, tokens=encoded.tokens)
        return output if return_dict else output.to_tuple()

    @staticmethod
    def _image_sizes(pixel_values, image_sizes) -> list[list[int]]:
        """`image_sizes` as a list of [height, width], checked against the padded batch."""
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
            raise ValueError(
                "image_sizes goes with a padded image batch [batch, channels, height, width], got "
                f"{type(pixel_values).__name__} of shape {tuple(getattr(pixel_values, 'shape', ()))}."
            )
        sizes = torch.as_tensor(image_sizes)
        if sizes.ndim != 2 or sizes.shape != (pixel_values.shape[0], 2):
            raise ValueError(
                f"image_sizes must have shape [{pixel_values.shape[0]}, 2] (height, width per image), got "
                f"{tuple(sizes.shape)}."
            )
        return sizes.tolist()

    @classmethod
    def _is_ragged(cls, pixel_values, image_sizes) -> bool:
        """A list of images, or a padded batch whose `image_sizes` are not all the full size."""
        if isinstance(pixel_values, (list, tuple)):
            return True
        if image_sizes is None:
            return False
        full = list(pixel_values.shape[-2:])
        return any(size != full for size in cls._image_sizes(pixel_values, image_sizes))

    def _split_images(self, pixel_values, image_sizes) -> list[torch.Tensor]:
        if image_sizes is None:
            return list(pixel_values)
        sizes = self._image_sizes(pixel_values, image_sizes)
        for height, width in sizes:
            if height > pixel_values.shape[-2] or width > pixel_values.shape[-1]:
                raise ValueError(
                    f"image size {height}x{width} exceeds the padded batch's {pixel_values.shape[-2]}x"
                    f"{pixel_values.shape[-1]}."
                )
        return [image[:, :height, :width] for image, (height, width) in zip(pixel_values, sizes)]

    def _encode_ragged(self, images: list[torch.Tensor], **kwargs) -> TokenizerEncoderOutput:
        """Encodes each image at its own size, batching the images that share one."""
        groups: dict[tuple, list[int]] = {}
        for index, image in enumerate(images):
            if not isinstance(image, torch.Tensor) or image.ndim != 3:
                raise ValueError(
                    f"a list input must hold images of shape [channels, height, width], item {index} is "
                    f"{type(image).__name__} of shape {tuple(getattr(image, 'shape', ()))}."
                )
            groups.setdefault(tuple(image.shape), []).append(index)
        tokens, latents, prequant = [None] * len(images), [None] * len(images), [None] * len(images)
        for indices in groups.values():
            batch = torch.stack([images[i] for i in indices])
            self.validate_pixel_values(batch)
            encoded = self._encode(batch, **kwargs)
            for row, index in enumerate(indices):
                tokens[index], latents[index] = encoded.tokens[row], encoded.latents[row]
                prequant[index] = encoded.encoder_output[row]
        return TokenizerEncoderOutput(latents=latents, tokens=tokens, encoder_output=prequant)

    # ---------------------------------------------------------------- encoder
    def _checkpointed(self, function, *args):
        if self.gradient_checkpointing and self.training:
            return self._gradient_checkpointing_func(function, *args)
        return function(*args)

    def _needs_a_second_frame(self, module: nn.Module, num_frames: int, latent_area: int) -> bool:
        """torch's GroupNorm refuses a call whose groups hold one value each (one frame, a 1x1 latent and one channel
        per group), which the original never meets because it runs `temporal_factor` copies of an image together.
        Such a group normalises to exactly 0 in any company, so the callers then run the frame twice and keep one."""
        if num_frames != 1 or latent_area != 1:
            return False
        return any(isinstance(norm, nn.GroupNorm) and norm.num_channels == norm.num_groups for norm in module.modules())

    def _encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """The 2D encoder, frame by frame: [N, 3, H, W] -> [N, latent_channels, h, w]."""
        latent_area = (frames.shape[-2] // self.spatial_factor) * (frames.shape[-1] // self.spatial_factor)
        if self._needs_a_second_frame(self.encoder, frames.shape[0], latent_area):
            return self._encode_frames(frames.expand(2, -1, -1, -1))[:1]
        encoder = self.encoder
        hidden_states = encoder.conv_in(frames)
        hidden_states = self._checkpointed(encoder.down_block, hidden_states)
        hidden_states = self._checkpointed(encoder.middle_block, hidden_states)
        hidden_states = nn.functional.silu(encoder.norm_out(hidden_states))
        return encoder.conv_out(hidden_states)

    def _encode_temporal(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Causal temporal downsampling + temporal res blocks + quant_conv: [B, C, T, h, w] -> [B, D, T // 4, h, w]."""
        for conv in self.encoder.time_conv:
            hidden_states = nn.functional.silu(conv(hidden_states))
        for layer in self.encoder.time_res_stack:
            hidden_states = layer(hidden_states)
        return self.quant_conv(hidden_states)

    def _encode(self, pixel_values: torch.Tensor, chunk_frames: bool = False) -> TokenizerEncoderOutput:
        pixel_values = pixel_values.to(self.encoder.conv_in.weight.dtype)
        factor = self.temporal_factor
        if pixel_values.ndim == 4:
            # an image is a clip of `factor` identical frames: encode the frame once, repeat its features
            features = self._encode_frames(pixel_values)
            hidden_states = features[:, :, None].expand(-1, -1, factor, -1, -1)
            prequant = self._encode_temporal(hidden_states).permute(0, 2, 1, 3, 4)  # [B, 1, D, h, w]
            codes = self.quantize(prequant)
            return TokenizerEncoderOutput(
                latents=self.tokens_to_latents(codes[:, 0]), tokens=codes[:, 0], encoder_output=prequant[:, 0]
            )
        batch_size, num_frames = pixel_values.shape[:2]
        if num_frames % factor:
            logger.warning_once(
                f"Emu3 encodes clips in groups of {factor} frames; the last {num_frames % factor} of {num_frames} "
                "frames are never read by the causal temporal layers and are dropped (as in the original model)."
            )
            pixel_values = pixel_values[:, : num_frames - num_frames % factor]
            num_frames = pixel_values.shape[1]
        if chunk_frames:
            pixel_values = pixel_values.reshape(batch_size * num_frames // factor, factor, *pixel_values.shape[2:])
        clips, clip_frames = pixel_values.shape[:2]
        features = self._encode_frames(pixel_values.flatten(0, 1))
        hidden_states = features.unflatten(0, (clips, clip_frames)).permute(0, 2, 1, 3, 4)  # b c t h w
        prequant = self._encode_temporal(hidden_states).permute(0, 2, 1, 3, 4)  # b t c h w
        prequant = prequant.reshape(batch_size, num_frames // factor, *prequant.shape[2:])
        codes = self.quantize(prequant)
        return TokenizerEncoderOutput(latents=self.tokens_to_latents(codes), tokens=codes, encoder_output=prequant)

    def tokens_to_latents(self, tokens: torch.Tensor) -> torch.Tensor:
        """Codebook vectors of grid tokens: `[B, h, w]` -> `[B, D, h, w]`, `[B, t, h, w]` -> `[B, t, D, h, w]`."""
        return self.quantize(codes=tokens).movedim(-1, -3)

    # ---------------------------------------------------------------- decoder
    def _decode_temporal(self, quant: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """post_quant_conv, then the decoder's temporal layers on the latents and on the raw codebook vectors (the
        SpatialNorm condition) together: [B, D, t, h, w] -> two [B, C, 4t, h, w]."""
        post_quant = self.post_quant_conv(quant)
        hidden_states = torch.cat((post_quant, quant), dim=0).to(self.decoder.conv_in.weight.dtype)
        for layer in self.decoder.time_res_stack:
            hidden_states = layer(hidden_states)
        for layer in self.decoder.time_conv:
            hidden_states = nn.functional.silu(layer(hidden_states))
        return hidden_states.chunk(2, dim=0)

    def _decode_frames(self, hidden_states: torch.Tensor, quant_states: torch.Tensor) -> torch.Tensor:
        """The 2D decoder, frame by frame: [N, C, h, w] (+ SpatialNorm condition [N, D, h, w]) -> [N, 3, H, W]."""
        if self._needs_a_second_frame(self.decoder, hidden_states.shape[0], hidden_states[0, 0].numel()):
            pair = (hidden_states.expand(2, -1, -1, -1), quant_states.expand(2, -1, -1, -1))
            return self._decode_frames(*pair)[:1]
        decoder = self.decoder
        hidden_states = decoder.conv_in(hidden_states)
        hidden_states = self._checkpointed(decoder.middle_block, hidden_states, quant_states)
        hidden_states = self._checkpointed(decoder.up_block, hidden_states, quant_states)
        hidden_states = nn.functional.silu(decoder.norm_out(hidden_states, quant_states))
        return decoder.conv_out(hidden_states)

    def _decode(self, latents: torch.Tensor, chunk_frames: bool = False) -> TokenizerDecoderOutput:
        is_image = latents.ndim == 4
        quant = latents[:, None] if is_image else latents
        batch_size, num_latent_frames = quant.shape[:2]
        if chunk_frames and not is_image:
            quant = quant.reshape(batch_size * num_latent_frames, 1, *quant.shape[2:])
        quant = quant.to(self.post_quant_conv.conv.weight.dtype).permute(0, 2, 1, 3, 4)  # b c t h w
        hidden_states, quant_states = self._decode_temporal(quant)
        if is_image:
            # the original decodes `factor` frames and returns the first: decode only that one
            frames = self._decode_frames(hidden_states[:, :, 0], quant_states[:, :, 0])
            return TokenizerDecoderOutput(reconstruction=frames)
        frames = self._decode_frames(
            hidden_states.transpose(1, 2).flatten(0, 1), quant_states.transpose(1, 2).flatten(0, 1)
        )
        return TokenizerDecoderOutput(reconstruction=frames.unflatten(0, (batch_size, -1)))



# ---------------------------------------------------------------------------------------------------------- AR model
class Emu3Model(TransformersNativeMixin, hf_emu3.Emu3Model):
    """transformers' `Emu3Model` with an `Emu3VisionTokenizer` as `vqmodel` (same parameters): images are encoded at
    their own sizes, pixel sizes and placeholder counts are checked, and the vision tokenizer stays frozen in eval
    mode (see the module docstring)."""

    def __init__(self, config: Emu3Config):
        # transformers' constructor with the tokenizer subclass in place of `Emu3VQVAE` (not built twice)
        super(hf_emu3.Emu3Model, self).__init__(config)
        self.text_model = hf_emu3.Emu3TextModel._from_config(config.text_config)
        self.vqmodel = Emu3VisionTokenizer(config.vq_config)
        self.vocabulary_mapping = hf_emu3.Emu3ImageVocabularyMapping(config.vocabulary_map)
        self.post_init()

    def train(self, mode: bool = True):
        """Training mode for the LLM only: the vision tokenizer stays in eval mode. The original trains the LLM alone,
        on codes precomputed with the frozen tokenizer (its argmin gives it no gradient); in training mode its
        BatchNorm3d layers would renormalise every batch and update their running statistics, which adapters (LoRA)
        do not save. Call `model.model.vqmodel.train()` afterwards to train the tokenizer itself."""
        super().train(mode)
        self.vqmodel.eval()
        return self

    def check_images(self, pixel_values: torch.Tensor, image_sizes=None) -> None:
        """Raises a ValueError unless `pixel_values` `[num_images, C, H, W]` and `image_sizes` `[num_images, 2]` are
        what `Emu3Processor` makes: every image size a positive multiple of the spatial factor and at most (H, W)."""
        num_channels, factor = self.config.vq_config.in_channels, self.vqmodel.spatial_factor
        is_tensor = isinstance(pixel_values, torch.Tensor)
        if not is_tensor or pixel_values.ndim != 4 or pixel_values.shape[1] != num_channels:
            got = f"shape {tuple(pixel_values.shape)}" if is_tensor else type(pixel_values).__name__
            raise ValueError(
                f"Emu3 takes images as pixel_values of shape [num_images, {num_channels}, height, width] (with "
                f"image_sizes [num_images, 2], as Emu3Processor returns them), got {got}."
            )
        if image_sizes is None:
            return
        height, width = pixel_values.shape[-2:]
        for index, (image_height, image_width) in enumerate(self.vqmodel._image_sizes(pixel_values, image_sizes)):
            if 0 < image_height <= height and 0 < image_width <= width and not (image_height % factor or
                                                                                image_width % factor):
                continue
            raise ValueError(
                f"image_sizes gives image {index} {image_height}x{image_width} pixels, but pixel_values hold "
                f"{height}x{width} pixels: expected every image size to be a positive multiple of the vision "
                f"tokenizer's spatial factor {factor} and at most the pixel size ({height}x{width}), got "
                f"{image_height}x{image_width}. Pass the pixel_values and image_sizes of one Emu3Processor call "
                "unchanged."
            )

    def encode_images(self, pixel_values: torch.Tensor, image_sizes=None):
        """`pixel_values` `[num_images, C, H, W]` (+ `image_sizes` of a padded batch) -> the vision tokenizer's
        output, each image encoded at its own size: `tokens` `[num_images, h, w]`, or a list of `[h_i, w_i]` when the
        sizes differ (`Emu3VisionTokenizer.encode`)."""
        self.check_images(pixel_values, image_sizes)
        return self.vqmodel.encode(pixel_values, image_sizes)

    def get_image_tokens(self, pixel_values: torch.Tensor, image_sizes=None) -> torch.LongTensor:
        """The ids that fill the images' placeholders, all images concatenated: each image's visual-token ids row by
        row, every row followed by the row end `<|extra_200|>` (`h_i * (w_i + 1)` ids per image)."""
        codes = self.encode_images(pixel_values, image_sizes).tokens
        return torch.cat([self.vocabulary_mapping.convert_img2bpe(grid).flatten() for grid in codes])

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor, image_sizes=None, **kwargs) -> Emu3VQVAEModelOutput:
        r"""
        Images -> the embeddings that fill their placeholders.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(num_images, num_channels, height, width)`):
                Images in [-1, 1], padded to a common size when they differ (`Emu3Processor`).
            image_sizes (`torch.LongTensor` of shape `(num_images, 2)`, *optional*):
                (height, width) of each image; defaults to the full size of `pixel_values`.

        Returns:
            `Emu3VQVAEModelOutput` with `pooler_output` (a tuple of `[h_i * (w_i + 1), text_hidden_size]` embeddings,
            one per image), `image_tokens` (a list of `[h_i, w_i]` codes) and `last_hidden_state` (a tuple of the
            quantizer's `[embed_dim, h_i, w_i]` input latents; transformers returns its padded encoder output).
            Other keyword arguments (transformers' output-capturing flags) are accepted and not used.
        """
        encoded = self.encode_images(pixel_values, image_sizes)
        codes = list(encoded.tokens)
        ids = [self.vocabulary_mapping.convert_img2bpe(grid).flatten() for grid in codes]
        embeddings = self.get_input_embeddings()(torch.cat(ids))
        return Emu3VQVAEModelOutput(last_hidden_state=tuple(encoded.encoder_output),
                                    pooler_output=torch.split(embeddings, [len(i) for i in ids]), image_tokens=codes)

    @torch.no_grad()
    def decode_image_tokens(self, image_tokens: torch.LongTensor, height: int, width: int) -> torch.FloatTensor:
        """Generated image sequences `[batch, height * (width + 1) + 3]` (rows of visual-token ids with row ends, then
        `<|extra_201|>`, `<|image end|>` and one more id, as transformers' method takes them) -> pixels
        `[batch, 3, factor * height, factor * width]` in [-1, 1] (spatial factor 8 for the releases), decoded by the
        vision tokenizer."""
        rows = image_tokens[:, :-3].reshape(-1, height, width + 1)
        return self.vqmodel.decode(self.vocabulary_mapping.convert_bpe2img(rows).long()).reconstruction

    def get_placeholder_mask(self, input_ids, inputs_embeds: torch.Tensor, image_features: torch.Tensor):
        """transformers' mask of the `<image>` placeholders, after checking that there is one per image token."""
        token_id = self.vocabulary_mapping.image_token_id
        if input_ids is not None:
            num_placeholders = (input_ids == token_id).sum()
        else:
            placeholder = self.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
            num_placeholders = (inputs_embeds == placeholder).all(-1).sum()
        torch_compilable_check(num_placeholders == image_features.shape[0], lambda: (
            f"input_ids hold {int(num_placeholders)} image placeholders (image_token_id {token_id}), but the images "
            f"give {image_features.shape[0]} image tokens (h * (w + 1) per image: its h x w codes and a row end "
            "per row); expected one placeholder per image token. Build input_ids and pixel_values with one "
            "Emu3Processor call, which writes the placeholders for each image's size."
        ))
        return super().get_placeholder_mask(input_ids, inputs_embeds=inputs_embeds, image_features=image_features)


class Emu3ForConditionalGeneration(TransformersNativeMixin, hf_emu3.Emu3ForConditionalGeneration):
    """transformers' `Emu3ForConditionalGeneration` around vistok's `Emu3Model` (see the module docstring);
    parameters, outputs and the saved config are those of transformers' class."""

    def __init__(self, config: Emu3Config):
        # transformers' constructor with vistok's Emu3Model (transformers' would build its VQ first)
        super(hf_emu3.Emu3ForConditionalGeneration, self).__init__(config)
        self.model = Emu3Model(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()


__all__ = ["Emu3ForConditionalGeneration", "Emu3Model", "Emu3VisionTokenizer", "Emu3VisionTokenizerQuantizer"]
