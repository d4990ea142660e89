"""LLaVA-Mini: one vision token per image through query-based compression and modality pre-fusion.

The vision tower (CLIP) and the language model (Llama) are transformers' own classes built from sub-configs; the
pre-fusion layers are transformers' ``LlamaDecoderLayer``s and the projector is transformers' LLaVA projector. What
LLaVA-Mini adds lives here: the compressor (C*C learned queries with 2D sin-cos positions cross-attending to the patch
features, whose key positions are the bicubically interpolated query table) and the pre-fusion that lets every text
token read the whole image before the language model sees only C*C vision tokens per image.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaDecoderLayer
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector
from transformers.utils.generic import can_return_tuple

from .configuration_llava_mini import LlavaMiniConfig
from .layers import VisionAttention, eager_attention_forward, get_2d_sincos_pos_embed, resample_abs_pos_embed


@dataclass
class LlavaMiniVisionOutput(BaseModelOutputWithPooling):
    r"""
    Output of the LLaVA-Mini vision path for U visual units (images, or video frames), P patch tokens per unit.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(U, P, vision_hidden)`): the selected CLIP patch features (in
            high-resolution mode the N x N crops stitched into one grid; the global view is not included).
        pooler_output (`torch.FloatTensor` of shape `(U, C*C, text_hidden)`): the vision tokens after pre-fusion, i.e.
            what fills the C*C placeholders of each unit.
        compressed_tokens (`torch.FloatTensor` of shape `(U, C*C, vision_hidden)`): compressor output (before the
            projector).
        fused_text_states (`torch.FloatTensor` of shape `(B, L, text_hidden)`, *optional*): the text embeddings after
            pre-fusion, averaged over the units of each sample; samples without units, padding and placeholder
            positions keep the plain token embeddings. `None` when no `input_ids` were given.
    """

    compressed_tokens: torch.FloatTensor | None = None
    fused_text_states: torch.FloatTensor | None = None


def compressor_position_table(embed_dim: int, grid_size: int) -> torch.Tensor:
    """[C*C, embed_dim] 2D sin-cos table of the compressor's query grid, MAE layout as in the original code: the first
    half of the channels encodes the column, the second half the row."""
    table = get_2d_sincos_pos_embed(embed_dim, grid_size, grid_size)  # [emb(row) | emb(col)] per (row, col)
    return table.view(grid_size, grid_size, embed_dim).transpose(0, 1).reshape(grid_size * grid_size, embed_dim)


class LlavaMiniCompressorAttention(VisionAttention):
    """Cross-attention of the compressor's queries to the patch features (separate q/k/v projections)."""

    def forward(
        self, query_states: torch.Tensor, key_states: torch.Tensor, value_states: torch.Tensor, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``query_states``: [B, Q, D]; ``key_states``/``value_states``: [B, N, D]; returns ([B, Q, D], weights)."""
        query = self.q_proj(query_states).unflatten(-1, (-1, self.head_dim)).transpose(1, 2)
        key = self.k_proj(key_states).unflatten(-1, (-1, self.head_dim)).transpose(1, 2)
        value = self.v_proj(value_states).unflatten(-1, (-1, self.head_dim)).transpose(1, 2)
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self, query, key, value, None, dropout=0.0, scaling=self.scaling, is_causal=False, **kwargs
        )
        attn_output = attn_output.flatten(-2).contiguous()
        return self.out_proj(attn_output), attn_weights


class LlavaMiniCompressor(nn.Module):
    """Query-based compression: C*C learned queries (plus a 2D sin-cos table) attend to the patch features, whose keys
    carry the same table resized bicubically to the patch grid. Works at the vision width."""

    def __init__(self, config: LlavaMiniConfig):
        super().__init__()
        dim = config.vision_config.hidden_size
        self.grid_size = config.compressor_grid_size
        self.query = nn.Parameter(torch.zeros(config.num_vision_tokens, dim))
        # fixed, but stored in the release checkpoints (and kept at their precision)
        self.pos_embed = nn.Parameter(compressor_position_table(dim, self.grid_size), requires_grad=False)
        self.ln_q = nn.LayerNorm(dim, eps=1e-5)
        self.ln_kv = nn.LayerNorm(dim, eps=1e-5)
        self.attn = LlavaMiniCompressorAttention(config, dim, config.compressor_num_attention_heads)

    def forward(self, patch_features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``patch_features``: [U, grid_h * grid_w, D] -> compressed tokens [U, C*C, D]."""
        if patch_features.shape[1] != grid[0] * grid[1]:
            raise ValueError(f"expected {grid[0]}x{grid[1]} patch tokens, got {patch_features.shape[1]}.")
        key_positions = resample_abs_pos_embed(
            self.pos_embed, grid, (self.grid_size, self.grid_size), antialias=False
        ).to(patch_features.dtype)
        values = self.ln_kv(patch_features)
        queries = (self.ln_q(self.query) + self.pos_embed.to(values.dtype)).expand(values.shape[0], -1, -1)
        out, _ = self.attn(queries, values + key_positions, values)
        return out


class LlavaMiniPreTrainedModel(PreTrainedModel):
    config: LlavaMiniConfig
    base_model_prefix = "model"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer", "LlavaMiniCompressor"]
    _skip_keys_device_placement = "cache"
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, LlavaMiniCompressor):
            init.normal_(module.query, std=0.02)
            init.copy_(module.pos_embed, compressor_position_table(module.pos_embed.shape[-1], module.grid_size))


class LlavaMiniModel(LlavaMiniPreTrainedModel):
    """The vision tower, compressor, projector, pre-fusion layers and the language model without its head."""

    def __init__(self, config: LlavaMiniConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.compressor = LlavaMiniCompressor(config)
        self.multi_modal_projector = LlavaMultiModalProjector(config)
        self.prefusion_layers = nn.ModuleList(
            [LlamaDecoderLayer(config.text_config, layer_idx=i) for i in range(config.num_prefusion_layers)]
        )
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def _placeholder_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        return (input_ids == self.config.image_token_id) | (input_ids == self.config.video_token_id)

    def embed_text(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Token embeddings; placeholders (which may lie outside the vocabulary) are embedded as id 0."""
        return self.get_input_embeddings()(input_ids.masked_fill(self._placeholder_mask(input_ids), 0))

    def _patch_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """[U, parts, 3, S, S] -> (compressor input [U, P, Dv], pre-fusion vision prefix [U, P', Dv], grid of the
        compressor input). ``parts`` is 1, or N*N crops + the whole image in high-resolution mode."""
        num_units, parts = pixel_values.shape[:2]
        outputs = self.vision_tower(pixel_values.flatten(0, 1), output_hidden_states=True)
        features = outputs.hidden_states[self.config.vision_feature_layer]
        if self.config.vision_feature_select_strategy == "default":
            features = features[:, 1:]
        length, dim = features.shape[1:]
        side = int(length**0.5)
        if side * side != length:
            raise ValueError(f"the vision tower returned {length} patch tokens, which is not a square grid.")
        features = features.view(num_units, parts, length, dim)
        if parts == 1:
            return features[:, 0], features[:, 0], (side, side)
        ratio = round((parts - 1) ** 0.5)
        if ratio * ratio + 1 != parts:
            raise ValueError(f"high-resolution input needs N*N crops + 1 global view per image, got {parts} parts.")
        # N x N crops of g x g patches -> one (N*g) x (N*g) grid, row-major
        stitched = features[:, :-1].view(num_units, ratio, ratio, side, side, dim).transpose(2, 3)
        stitched = stitched.reshape(num_units, ratio * side * ratio * side, dim)
        prefix = torch.cat([stitched, features[:, -1]], dim=1)
        return stitched, prefix, (ratio * side, ratio * side)

    def encode_visual_units(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.LongTensor | None = None,
        text_mask: torch.Tensor | None = None,
        unit_to_sample: torch.LongTensor | None = None,
        return_patch_features: bool = True,
    ) -> LlavaMiniVisionOutput:
        """Compression + pre-fusion of U visual units (images or video frames).

        Args:
            pixel_values: [U, 3, S, S] or [U, parts, 3, S, S] (parts = N*N + 1 in high-resolution mode).
            input_ids: [B, L] prompts with placeholders; each unit is fused with the prompt of its sample.
            text_mask: [B, L], 1 for the tokens that take part in the pre-fusion (0 on padding); placeholders never do.
            unit_to_sample: [U] sample index of every unit (default: unit u belongs to sample u).
            return_patch_features: keep the CLIP patch features of every unit in the output (the model's forward
                does not, so long videos do not hold them).
        """
        if pixel_values.ndim == 4:
            pixel_values = pixel_values[:, None]
        if pixel_values.ndim != 5:
            raise ValueError(
                "pixel_values must be [num_images, 3, S, S] or [num_images, parts, 3, S, S], got "
                f"{tuple(pixel_values.shape)}."
            )
        expected_parts = self.config.resolution_ratio**2 + 1 if self.config.resolution_ratio > 1 else 1
        if pixel_values.shape[1] != expected_parts:
            raise ValueError(
                f"resolution_ratio={self.config.resolution_ratio} needs {expected_parts} views per image, got "
                f"{pixel_values.shape[1]}."
            )
        size = self.config.vision_config.image_size
        if tuple(pixel_values.shape[-2:]) != (size, size):
            raise ValueError(
                f"pixel_values must hold {size}x{size} images (the vision tower's image_size), got "
                f"{pixel_values.shape[-2]}x{pixel_values.shape[-1]}."
            )
        pixel_values = pixel_values.to(self.vision_tower.dtype)
        if input_ids is not None:
            if unit_to_sample is None:
                unit_to_sample = torch.arange(pixel_values.shape[0], device=input_ids.device)
            if unit_to_sample.shape[0] != pixel_values.shape[0]:
                raise ValueError(
                    f"unit_to_sample has {unit_to_sample.shape[0]} entries for {pixel_values.shape[0]} visual units."
                )
            text_embeds = self.embed_text(input_ids)
            text_valid = ~self._placeholder_mask(input_ids)
            if text_mask is not None:
                text_valid &= text_mask.bool()
            sums = torch.zeros(*text_embeds.shape, dtype=torch.float32, device=text_embeds.device)
        # long videos: a chunk of units at a time bounds the activations (the results do not depend on the chunking)
        step = self.config.vision_chunk_size or pixel_values.shape[0]
        patches, compressed, vision_tokens = [], [], []
        for start in range(0, pixel_values.shape[0], step):
            chunk_patches, prefix, grid = self._patch_features(pixel_values[start : start + step])
            chunk_compressed = self.compressor(chunk_patches, grid)
            vision_prefix = self.multi_modal_projector(torch.cat([prefix, chunk_compressed], dim=1))
            num_units, prefix_length = vision_prefix.shape[:2]
            valid = torch.ones(num_units, prefix_length, dtype=torch.bool, device=vision_prefix.device)
            if input_ids is None:
                # the vision tokens come before the text and attention is causal: they never depend on the prompt
                fused = self._prefusion(vision_prefix, valid)
            else:
                owners = unit_to_sample[start : start + step]
                sequence = torch.cat([vision_prefix, text_embeds[owners].to(vision_prefix.dtype)], dim=1)
                fused = self._prefusion(sequence, torch.cat([valid, text_valid[owners]], dim=1))
                sums.index_add_(0, owners, fused[:, prefix_length:].float())
            vision_tokens.append(fused[:, prefix_length - chunk_compressed.shape[1] : prefix_length])
            compressed.append(chunk_compressed)
            if return_patch_features:
                patches.append(chunk_patches)
        output = LlavaMiniVisionOutput(
            last_hidden_state=torch.cat(patches) if return_patch_features else None,
            pooler_output=torch.cat(vision_tokens),
            compressed_tokens=torch.cat(compressed),
        )
        if input_ids is not None:
            # text states: float32 mean over the units of each sample (the original averages video frames like this)
            counts = torch.bincount(unit_to_sample, minlength=input_ids.shape[0]).to(sums.device)
            fused_text = (sums / counts.clamp(min=1)[:, None, None]).to(text_embeds.dtype)
            keep_plain = ~text_valid | (counts == 0)[:, None]
            output.fused_text_states = torch.where(keep_plain[..., None], text_embeds, fused_text)
        return output

    def _prefusion(self, hidden_states: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Runs the pre-fusion layers over [U, T, H] with a causal mask restricted to ``valid`` keys; positions count
        only valid tokens (as in the original, placeholders and padding do not take a position)."""
        position_ids = (valid.long().cumsum(-1) - 1).masked_fill(~valid, 1)
        mask = create_causal_mask(
            config=self.config.text_config,
            inputs_embeds=hidden_states,
            attention_mask=valid,
            cache=None,
            position_ids=position_ids,
        )
        position_embeddings = self.language_model.rotary_emb(hidden_states, position_ids=position_ids)
        for layer in self.prefusion_layers:
            hidden_states = layer(
                hidden_states, attention_mask=mask, position_ids=position_ids, position_embeddings=position_embeddings
            )
        return hidden_states

    def _unit_owners(self, input_ids: torch.Tensor, token_id: int, num_units: int, what: str) -> torch.LongTensor:
        """Sample index of each of ``num_units`` images (or frames), from the C*C placeholders each occupies."""
        counts = (input_ids == token_id).sum(-1)
        per_unit = self.config.num_vision_tokens
        if (counts % per_unit).any():
            raise ValueError(
                f"every {what} must occupy {per_unit} placeholder tokens (id {token_id}); got counts {counts.tolist()}."
            )
        if int(counts.sum()) != num_units * per_unit:
            raise ValueError(
                f"input_ids hold placeholders for {int(counts.sum()) // per_unit} {what}s but {num_units} were given."
            )
        return torch.repeat_interleave(torch.arange(len(counts), device=input_ids.device), counts // per_unit)

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> LlavaMiniVisionOutput:
        """Vision tokens of images, and (with ``input_ids``) the text states fused with them.

        Args:
            pixel_values: [num_images, 3, S, S] or [num_images, N*N + 1, 3, S, S] (high-resolution mode).
            input_ids: [B, L] with C*C placeholders (`config.image_token_id`) per image; images are assigned to the
                samples in order. Without it every image is encoded alone and `fused_text_states` is None.
        Returns:
            `LlavaMiniVisionOutput`; `.pooler_output` [num_images, C*C, H] are the tokens that fill the placeholders.
        """
        owners = None
        if input_ids is not None:
            owners = self._unit_owners(input_ids, self.config.image_token_id, pixel_values.shape[0], "image")
        return self.encode_visual_units(pixel_values, input_ids, attention_mask, owners)

    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor | list[torch.Tensor],
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> LlavaMiniVisionOutput:
        """Vision tokens of video frames (C*C per frame) and the fused text states averaged over all frames of a sample.

        Args:
            pixel_values_videos: [num_videos, T, 3, S, S] (or with a parts axis after T in high-resolution mode), or a
                list of [T_i, ...] tensors for videos of different lengths.
            input_ids: [B, L] with T*C*C placeholders (`config.video_token_id`) per video.
        Returns:
            `LlavaMiniVisionOutput` over all frames; `.pooler_output` [total_frames, C*C, H].
        """
        frames = torch.cat(list(pixel_values_videos), dim=0)
        owners = None
        if input_ids is not None:
            owners = self._unit_owners(input_ids, self.config.video_token_id, frames.shape[0], "video frame")
        return self.encode_visual_units(frames, input_ids, attention_mask, owners)

    def merge_multimodal_inputs(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        fusion_mask: torch.Tensor | None = None,
        return_patch_features: bool = False,
    ) -> tuple[torch.Tensor, LlavaMiniVisionOutput | None]:
        """The language model's input embeddings: fused text with every placeholder replaced by its vision token.

        Images and video frames of one sample are fused with its prompt one unit at a time and its text states are
        averaged over all of them, as the original does for the frames of a video. Only the tokens marked by
        ``fusion_mask`` (see `forward`) and ``attention_mask`` take part in the pre-fusion."""
        inputs_embeds = self.embed_text(input_ids)
        text_mask = torch.ones_like(input_ids, dtype=torch.bool)
        if attention_mask is not None:
            text_mask &= attention_mask[:, -input_ids.shape[1] :].bool()
        if fusion_mask is not None:
            # columns past the fusion mask (tokens generated after the prompt) keep their plain embeddings
            prompt = torch.zeros_like(text_mask)
            columns = min(fusion_mask.shape[1], input_ids.shape[1])
            prompt[:, :columns] = fusion_mask[:, :columns].bool()
            text_mask &= prompt
        if pixel_values is None and pixel_values_videos is None:
            if self._placeholder_mask(input_ids).any():
                raise ValueError("input_ids contain image/video placeholders but no pixel_values were given.")
            return inputs_embeds, None
        kinds, units, owners = [], [], []
        for pixels, token_id, what in (
            (pixel_values, self.config.image_token_id, "image"),
            (pixel_values_videos, self.config.video_token_id, "video frame"),
        ):
            if pixels is None:
                continue
            if what == "video frame":
                pixels = torch.cat(list(pixels), dim=0)
            if pixels.ndim == 4:
                pixels = pixels[:, None]
            units.append(pixels)
            owners.append(self._unit_owners(input_ids, token_id, pixels.shape[0], what))
            kinds.append((token_id, pixels.shape[0]))
        features = self.encode_visual_units(
            torch.cat(units), input_ids, text_mask, torch.cat(owners), return_patch_features=return_patch_features
        )
        inputs_embeds = features.fused_text_states.to(inputs_embeds.dtype)
        start = 0
        for token_id, count in kinds:
            tokens = features.pooler_output[start : start + count].reshape(-1, inputs_embeds.shape[-1])
            mask = (input_ids == token_id)[..., None].expand_as(inputs_embeds)
            inputs_embeds = inputs_embeds.masked_scatter(mask, tokens.to(inputs_embeds.dtype))
            start += count
        return inputs_embeds, features

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        fusion_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> MultimodalBaseModelOutputWithPast:
        r"""
        input_ids (`torch.LongTensor` of shape `(B, L)`): prompts with C*C placeholders per image and T*C*C per video.
        pixel_values (`torch.FloatTensor` of shape `(num_images, 3, S, S)` or `(num_images, N*N+1, 3, S, S)`).
        pixel_values_videos (`torch.FloatTensor` of shape `(num_videos, T, 3, S, S)`, or a list of `(T_i, 3, S, S)`).
        fusion_mask (`torch.Tensor` of shape `(B, P)`, *optional*): 1 for the tokens that take part in the modality
            pre-fusion. The processor returns it for the prompt; tokens past column P keep their plain embeddings, as
            tokens generated after the prompt do in the original (which fuses only the prompt), so a full forward
            over prompt + generated tokens matches cached generation. Default: every (non-padding) token.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds.")
        features = None
        if inputs_embeds is None:
            inputs_embeds, features = self.merge_multimodal_inputs(
                input_ids, pixel_values, pixel_values_videos, attention_mask, fusion_mask
            )
        elif pixel_values is not None or pixel_values_videos is not None:
            raise ValueError("LLaVA-Mini fuses images with the prompt: pass input_ids (not inputs_embeds) with pixels.")
        if position_ids is None and attention_mask is not None and attention_mask.ndim == 2:
            # positions skip left padding, so a padded batch matches its items run one by one
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -inputs_embeds.shape[1] :]
        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        is_video = pixel_values is None and features is not None
        return MultimodalBaseModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=None if is_video else features,
            video_outputs=features if is_video else None,
        )


class LlavaMiniForConditionalGeneration(LlavaMiniPreTrainedModel, GenerationMixin):
    """LLaVA-Mini with its language-modelling head."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # module prefixes of the parts LoRA can target (vistok.modeling.lora)
    _lora_parts = {
        "llm": ("model.language_model", "model.prefusion_layers"),
        "vision": "model.vision_tower",
        "projector": ("model.multi_modal_projector", "model.compressor"),
    }

    def __init__(self, config: LlavaMiniConfig):
        super().__init__(config)
        self.model = LlavaMiniModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_image_features(self, pixel_values, input_ids=None, attention_mask=None, **kwargs):
        return self.model.get_image_features(pixel_values, input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def get_video_features(self, pixel_values_videos, input_ids=None, attention_mask=None, **kwargs):
        return self.model.get_video_features(
            pixel_values_videos, input_ids=input_ids, attention_mask=attention_mask, **kwargs
        )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        fusion_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> MultimodalCausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(B, L)`, *optional*): next-token targets (-100 = ignored; placeholders
            should be -100). As in the original training, tokens with a target (the answers) are left out of the
            pre-fusion: they keep their plain embeddings, like generated tokens at inference.
        fusion_mask (`torch.Tensor` of shape `(B, P)`, *optional*): see `LlavaMiniModel.forward`.
        """
        if labels is not None and input_ids is not None:
            answer_free = labels == -100
            if fusion_mask is not None:
                columns = min(fusion_mask.shape[1], labels.shape[1])
                answer_free[:, :columns] &= fusion_mask[:, :columns].bool()
                answer_free[:, columns:] = False
            fusion_mask = answer_free
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            fusion_mask=fusion_mask,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size,
                                      **kwargs)
        return MultimodalCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
            video_outputs=outputs.video_outputs,
        )


__all__ = [
    "LlavaMiniCompressor",
    "LlavaMiniForConditionalGeneration",
    "LlavaMiniModel",
    "LlavaMiniPreTrainedModel",
    "LlavaMiniVisionOutput",
]
