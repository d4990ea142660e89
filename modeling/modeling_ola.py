"""Ola (Liu et al., 2025, arXiv:2502.04328): an omni-modal LLM for images, videos and audio, as a transformers model.

* Vision: OryxViT (a native-resolution SigLIP ViT whose learned position grid is bilinearly resized to every image),
  then per view `proj1` -> local-global attention pooling of 2x2 windows -> GELU -> `proj2`, a learned newline after
  every row. An image gives `[begin, low-res view, sep, high-res view, end]`; a video gives
  `[begin, (frame, sep) * T, end]` from its frames.
* Audio: every 30 s window goes through Whisper's encoder (transformers' `WhisperEncoder`) and BEATs; their features
  are concatenated on channels, grouped by `audio_downsample_rate` frames and projected by a 2-layer ReLU MLP, with a
  newline per window and `[begin, ..., end]` around the clip.
* The LLM is transformers' `Qwen2Model`; multimodal embeddings replace their placeholder tokens, each modality in
  prompt order (the original fills all image features first, then all audio features, whatever the order of the
  placeholders; the two agree whenever images come before audio in the prompt).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput, ModelOutput
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .configuration_ola import OlaConfig, OryxViTConfig
from .layers import VisionEncoderLayer, init_common_weights
from .modeling_beats import BeatsModel


def _as_grids(grid: torch.Tensor | Sequence, width: int, name: str) -> list[tuple[int, ...]]:
    grids = [tuple(int(v) for v in row) for row in (grid.tolist() if isinstance(grid, torch.Tensor) else grid)]
    if any(len(row) != width for row in grids):
        raise ValueError(f"{name} must have {width} values per item, got {grids}.")
    return grids


# ----------------------------------------------------------------------------------------------------------- OryxViT


class OryxViTEmbeddings(nn.Module):
    """Patch embedding of flattened patches plus the learned position grid resized to each image's patch grid."""

    def __init__(self, config: OryxViTConfig):
        super().__init__()
        self.config = config
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.position_embedding = nn.Parameter(torch.zeros(config.position_grid_size**2, config.hidden_size))

    def interpolate_pos_encoding(self, height: int, width: int) -> torch.Tensor:
        """[height * width, hidden]: bilinear resize (`align_corners=False`, no antialias) of the square table."""
        side = self.config.position_grid_size
        if (height, width) == (side, side):
            return self.position_embedding
        table = self.position_embedding.T.reshape(1, -1, side, side)
        table = F.interpolate(table, size=(height, width), mode="bilinear", align_corners=False)
        return table.reshape(-1, height * width).T

    def forward(self, pixel_values: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        """``pixel_values``: [B, h * w, C * p * p] patches (row-major grid, channel-major patches) -> [B, h * w, D]."""
        patch = self.config.patch_size
        batch, length, _ = pixel_values.shape
        patches = pixel_values.reshape(batch * length, self.config.num_channels, patch, patch)
        embeddings = self.patch_embedding(patches.to(self.patch_embedding.weight.dtype)).reshape(batch, length, -1)
        return embeddings + self.interpolate_pos_encoding(*grid_hw).to(embeddings.dtype)


class OryxViTEncoderLayer(VisionEncoderLayer):
    def __init__(self, config: OryxViTConfig):
        super().__init__(
            config,
            config.hidden_size,
            config.num_attention_heads,
            config.intermediate_size,
            hidden_act=config.hidden_act,
            layer_norm_eps=config.layer_norm_eps,
        )


class OryxViTPreTrainedModel(PreTrainedModel):
    config: OryxViTConfig
    base_model_prefix = "oryx_vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["OryxViTEmbeddings", "OryxViTEncoderLayer"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if init_common_weights(module, self.config.initializer_range):
            return
        if isinstance(module, OryxViTEmbeddings):
            init.trunc_normal_(module.position_embedding, std=self.config.initializer_range)


class OryxViTModel(OryxViTPreTrainedModel):
    """OryxViT at native resolution. Images of different sizes are packed along the first axis; images of equal
    size are encoded together, each attending only to itself."""

    def __init__(self, config: OryxViTConfig):
        super().__init__(config)
        self.embeddings = OryxViTEmbeddings(config)
        self.layers = nn.ModuleList([OryxViTEncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, grid_hw: torch.Tensor, **kwargs) -> BaseModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(total_patches, num_channels * patch_size ** 2)`):
            the patches of every image, image after image, each row-major over its patch grid.
        grid_hw (`torch.LongTensor` of shape `(num_images, 2)`):
            patch grid (height, width) of every image.

        Returns `last_hidden_state` of shape `(total_patches, hidden_size)`, in the input order.
        """
        grids = _as_grids(grid_hw, 2, "grid_hw")
        lengths = [h * w for h, w in grids]
        patch_dim = self.config.num_channels * self.config.patch_size**2
        if pixel_values.ndim != 2 or pixel_values.shape[1] != patch_dim or pixel_values.shape[0] != sum(lengths):
            raise ValueError(
                f"pixel_values must be [total_patches={sum(lengths)}, {patch_dim}] for grids {grids}, got "
                f"{tuple(pixel_values.shape)}."
            )
        per_image = list(pixel_values.split(lengths))
        outputs = [None] * len(grids)
        for grid in dict.fromkeys(grids):
            indices = [i for i, g in enumerate(grids) if g == grid]
            hidden_states = self.embeddings(torch.stack([per_image[i] for i in indices]), grid)
            for layer in self.layers:
                hidden_states = layer(hidden_states, **kwargs)
            for i, states in zip(indices, hidden_states):
                outputs[i] = states
        return BaseModelOutput(last_hidden_state=torch.cat(outputs) if outputs else pixel_values.new_zeros(0))


# --------------------------------------------------------------------------------------------------------- projectors


class OlaLocalGlobalPooler(nn.Module):
    """Local-global attention pooling of 2x2 windows: each position is scored from itself and the window mean; a
    per-channel softmax over the 4 positions weights their sum. [B, H, W, C] -> [B, H/2, W/2, C]."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.fc1 = nn.Linear(2 * hidden_size, hidden_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = hidden_states.shape
        if height % 2 or width % 2:
            raise ValueError(f"local-global pooling needs an even patch grid, got {height}x{width}.")
        windows = hidden_states.reshape(batch, height // 2, 2, width // 2, 2, channels).permute(0, 1, 3, 2, 4, 5)
        windows = windows.reshape(batch, height // 2, width // 2, 4, channels)
        fused = torch.cat([windows, windows.mean(-2, keepdim=True).expand_as(windows)], dim=-1)
        weights = self.fc2(self.act(self.fc1(fused))).softmax(dim=-2)
        return (windows * weights).sum(dim=-2)


class OlaSeparators(nn.Module):
    """Learned marker embeddings (newline, begin, end and, for vision, the view/frame separator)."""

    def __init__(self, hidden_size: int, with_separator: bool):
        super().__init__()
        self.newline = nn.Parameter(torch.zeros(hidden_size))
        self.begin = nn.Parameter(torch.zeros(hidden_size))
        self.end = nn.Parameter(torch.zeros(hidden_size))
        self.separator = nn.Parameter(torch.zeros(hidden_size)) if with_separator else None

    def forward(self) -> torch.Tensor:
        """[3 or 4, D]: newline, begin, end(, separator); read through `forward` so offload hooks load them."""
        markers = [self.newline, self.begin, self.end] + ([self.separator] if self.separator is not None else [])
        return torch.stack(markers)


class OlaMultiModalProjector(nn.Module):
    """OryxViT features -> LLM embeddings: per view proj1, local-global pooling, GELU, proj2, a newline after each
    row; images and videos are then wrapped in their markers."""

    def __init__(self, config: OlaConfig):
        super().__init__()
        hidden = config.text_config.hidden_size
        self.proj1 = nn.Linear(config.vision_config.hidden_size, hidden)
        self.pooler = OlaLocalGlobalPooler(hidden)
        self.act = ACT2FN[config.projector_hidden_act]
        self.proj2 = nn.Linear(hidden, hidden)
        self.separators = OlaSeparators(hidden, with_separator=True)

    def project_view(self, features: torch.Tensor, grid_hw: tuple[int, int], newline: torch.Tensor) -> torch.Tensor:
        """[B, h * w, Dv] -> [B, h/2 * (w/2 + 1), D]."""
        batch = features.shape[0]
        hidden_states = self.proj2(self.act(self.pooler(self.proj1(features.reshape(batch, *grid_hw, -1)))))
        rows, cols = hidden_states.shape[1:3]
        newline = newline.to(hidden_states.dtype).expand(batch, rows, 1, -1)
        return torch.cat([hidden_states, newline], dim=2).reshape(batch, rows * (cols + 1), -1)

    def forward(
        self,
        features: torch.Tensor,
        grid_hw: tuple[int, int],
        lowres_features: torch.Tensor | None = None,
        lowres_grid_hw: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """One image (``lowres_features`` given; ``features`` [h * w, Dv] of the high-res view):
        [begin, low-res tokens, sep, high-res tokens, end]; or one video (``features`` [T, h * w, Dv], its frames):
        [begin, (frame tokens, sep) * T, end]. Returns [N, D]."""
        newline, begin, end, separator = self.separators()[:, None]
        if lowres_features is not None:
            low = self.project_view(lowres_features[None], lowres_grid_hw, newline)[0]
            high = self.project_view(features[None], grid_hw, newline)[0]
            parts = [begin, low, separator, high, end]
        else:
            tokens = self.project_view(features, grid_hw, newline)
            separators = separator.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
            parts = [begin, torch.cat([tokens, separators], dim=1).flatten(0, 1), end]
        dtype = parts[1].dtype
        return torch.cat([part.to(dtype) for part in parts])


class OlaAudioProjector(nn.Module):
    """Concatenated Whisper + BEATs frames -> groups of `audio_downsample_rate` frames -> Linear, ReLU, Linear."""

    def __init__(self, config: OlaConfig):
        super().__init__()
        self.downsample_rate = config.audio_downsample_rate
        encoder_dim = config.audio_config.d_model + config.beats_config.hidden_size
        self.linear1 = nn.Linear(encoder_dim * self.downsample_rate, config.audio_projector_hidden_size)
        self.act = nn.ReLU()
        self.linear2 = nn.Linear(config.audio_projector_hidden_size, config.text_config.hidden_size)
        self.separators = OlaSeparators(config.text_config.hidden_size, with_separator=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features``: [num_windows, frames, Dw + Db] of one clip -> [2 + num_windows * (frames // k + 1), D]."""
        windows, frames, dim = features.shape
        usable = frames - frames % self.downsample_rate
        grouped = features[:, :usable].reshape(windows, usable // self.downsample_rate, dim * self.downsample_rate)
        tokens = self.linear2(self.act(self.linear1(grouped)))
        newline, begin, end = self.separators().to(tokens.dtype)[:, None]
        tokens = torch.cat([tokens, newline.expand(windows, 1, -1)], dim=1).flatten(0, 1)
        return torch.cat([begin, tokens, end])


# -------------------------------------------------------------------------------------------------------------- Ola


@dataclass
class OlaModelOutputWithPast(ModelOutput):
    r"""
    last_hidden_state: LLM output states [B, L, D]. cache: the key/value cache.
    image_features / video_features / audio_features: the embeddings that filled each item's placeholders.
    """

    last_hidden_state: torch.FloatTensor | None = None
    cache: object | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_features: list[torch.FloatTensor] | None = None
    video_features: list[torch.FloatTensor] | None = None
    audio_features: list[torch.FloatTensor] | None = None


@dataclass
class OlaCausalLMOutputWithPast(ModelOutput):
    r"""logits: [B, L, vocab]; loss: next-token loss when `labels` are given; other fields as `OlaModelOutputWithPast`."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: object | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_features: list[torch.FloatTensor] | None = None
    video_features: list[torch.FloatTensor] | None = None
    audio_features: list[torch.FloatTensor] | None = None


class OlaPreTrainedModel(PreTrainedModel):
    config: OlaConfig
    base_model_prefix = "model"
    input_modalities = ("image", "video", "audio", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = [
        "OryxViTEmbeddings", "OryxViTEncoderLayer", "BeatsEncoderLayer", "BeatsPatchEmbeddings",
        "WhisperEncoderLayer", "Qwen2DecoderLayer", "OlaMultiModalProjector", "OlaAudioProjector",
    ]
    _skip_keys_device_placement = "cache"
    _supports_flash_attn = False
    _supports_sdpa = True
    _supports_flex_attn = False
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # encoders and LLM: their own classes' schemes; linear layers of the projectors: the generic normal init
        if isinstance(module, OlaSeparators):
            for parameter in module.parameters(recurse=False):
                init.normal_(parameter, std=parameter.shape[0] ** -0.5)
        else:
            super()._init_weights(module)


class OlaModel(OlaPreTrainedModel):
    """Encoders, projectors and the Qwen2 decoder (no LM head)."""

    def __init__(self, config: OlaConfig):
        super().__init__(config)
        self.vision_tower = OryxViTModel._from_config(config.vision_config)
        self.audio_tower = WhisperEncoder._from_config(config.audio_config)
        self.beats_tower = BeatsModel._from_config(config.beats_config)
        self.multi_modal_projector = OlaMultiModalProjector(config)
        self.audio_projector = OlaAudioProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_grid_hw: torch.Tensor,
        pixel_values_lowres: torch.Tensor,
        image_grid_hw_lowres: torch.Tensor,
        **kwargs,
    ) -> list[torch.Tensor]:
        """Embeddings of each image ([N_i, D] each, N_i = 3 + the two views' tokens) from its packed high-res and
        low-res patches (`OlaImageProcessor`)."""
        high_grids = _as_grids(image_grid_hw, 2, "image_grid_hw")
        low_grids = _as_grids(image_grid_hw_lowres, 2, "image_grid_hw_lowres")
        if len(high_grids) != len(low_grids):
            raise ValueError(f"got {len(high_grids)} high-res but {len(low_grids)} low-res views; need one of each.")
        high = self.vision_tower(pixel_values, image_grid_hw, **kwargs).last_hidden_state
        low = self.vision_tower(pixel_values_lowres, image_grid_hw_lowres, **kwargs).last_hidden_state
        high = high.split([h * w for h, w in high_grids])
        low = low.split([h * w for h, w in low_grids])
        return [
            self.multi_modal_projector(hi, hg, lo, lg) for lo, lg, hi, hg in zip(low, low_grids, high, high_grids)
        ]

    def get_video_features(self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor, **kwargs):
        """Embeddings of each video ([N_i, D]) from the packed patches of its frames (`OlaVideoProcessor`)."""
        grids = _as_grids(video_grid_thw, 3, "video_grid_thw")
        frame_grids = torch.tensor([(h, w) for t, h, w in grids for _ in range(t)], dtype=torch.long).reshape(-1, 2)
        features = self.vision_tower(pixel_values_videos, frame_grids, **kwargs).last_hidden_state
        features = features.split([t * h * w for t, h, w in grids])
        return [
            self.multi_modal_projector(feats.reshape(t, h * w, -1), (h, w))
            for feats, (t, h, w) in zip(features, grids)
        ]

    def get_audio_features(
        self, input_features: torch.Tensor, beats_features: torch.Tensor, audio_chunks: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Embeddings of each audio clip from its 30 s windows.

        Args:
            input_features: [num_windows, 128, 3000] Whisper log-mel spectrograms.
            beats_features: [num_windows, frames, 128] BEATs filterbanks of the same windows.
            audio_chunks: [num_clips] windows per clip (default: one clip).
        """
        if input_features.shape[0] != beats_features.shape[0]:
            raise ValueError(
                f"input_features ({input_features.shape[0]} windows) and beats_features ({beats_features.shape[0]}) "
                "must describe the same windows."
            )
        whisper = self.audio_tower(input_features.to(self.audio_tower.dtype)).last_hidden_state
        beats = self.beats_tower(beats_features).last_hidden_state.to(whisper.dtype)
        length = max(whisper.shape[1], beats.shape[1])
        whisper = F.pad(whisper, (0, 0, 0, length - whisper.shape[1]))
        beats = F.pad(beats, (0, 0, 0, length - beats.shape[1]))
        features = torch.cat([whisper, beats], dim=-1)
        chunks = [features.shape[0]] if audio_chunks is None else [int(c) for c in audio_chunks]
        if sum(chunks) != features.shape[0]:
            raise ValueError(f"audio_chunks {chunks} must sum to the number of windows ({features.shape[0]}).")
        return [self.audio_projector(clip) for clip in features.split(chunks)]

    def _scatter(self, inputs_embeds, input_ids, token_id, features, name):
        mask = input_ids == token_id
        features = torch.cat(features).to(inputs_embeds.device, inputs_embeds.dtype)
        if int(mask.sum()) != features.shape[0]:
            raise ValueError(
                f"{name} features and {name} placeholder tokens do not match: {int(mask.sum())} tokens with id "
                f"{token_id} but {features.shape[0]} embeddings."
            )
        return inputs_embeds.masked_scatter(mask[..., None].to(inputs_embeds.device), features)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_grid_hw: torch.LongTensor | None = None,
        pixel_values_lowres: torch.FloatTensor | None = None,
        image_grid_hw_lowres: torch.LongTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        beats_features: torch.FloatTensor | None = None,
        audio_chunks: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> OlaModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds.")
        image_features = video_features = audio_features = None
        multimodal = (pixel_values, pixel_values_videos, input_features)
        if inputs_embeds is not None and any(x is not None for x in multimodal):
            raise ValueError(
                "pass input_ids (with placeholder tokens) together with pixel values or audio features; with "
                "inputs_embeds, insert the multimodal embeddings (get_image_features / get_audio_features) yourself."
            )
        if inputs_embeds is None:
            ids = self.config.image_token_id, self.config.video_token_id, self.config.audio_token_id
            placeholders = torch.isin(input_ids, torch.tensor(ids, device=input_ids.device))
            # placeholder ids may lie outside the vocabulary: look up a valid id and overwrite it below
            inputs_embeds = self.get_input_embeddings()(input_ids.masked_fill(placeholders, 0))
            if pixel_values is not None:
                image_features = self.get_image_features(
                    pixel_values, image_grid_hw, pixel_values_lowres, image_grid_hw_lowres
                )
                inputs_embeds = self._scatter(inputs_embeds, input_ids, self.config.image_token_id, image_features, "image")
            if pixel_values_videos is not None:
                video_features = self.get_video_features(pixel_values_videos, video_grid_thw)
                inputs_embeds = self._scatter(inputs_embeds, input_ids, self.config.video_token_id, video_features, "video")
            if input_features is not None:
                audio_features = self.get_audio_features(input_features, beats_features, audio_chunks)
                inputs_embeds = self._scatter(inputs_embeds, input_ids, self.config.audio_token_id, audio_features, "audio")
        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return OlaModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=getattr(outputs, "cache", None),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_features=image_features,
            video_features=video_features,
            audio_features=audio_features,
        )


_MULTIMODAL_INPUTS = (
    "pixel_values", "image_grid_hw", "pixel_values_lowres", "image_grid_hw_lowres", "pixel_values_videos",
    "video_grid_thw", "input_features", "beats_features", "audio_chunks",
)


class OlaForConditionalGeneration(OlaPreTrainedModel, GenerationMixin):
    """Ola with its language-modelling head; `generate` works with every modality."""

    # only tied when `config.tie_word_embeddings` (Ola-7b is untied)
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # module prefixes per part, for `vistok.modeling.lora.get_lora_target_modules`
    _lora_parts = {
        "llm": "model.language_model",
        "vision": "model.vision_tower",
        "projector": ("model.multi_modal_projector", "model.audio_projector"),
    }

    def __init__(self, config: OlaConfig):
        super().__init__(config)
        self.model = OlaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_image_features(self, *args, **kwargs):
        return self.model.get_image_features(*args, **kwargs)

    def get_video_features(self, *args, **kwargs):
        return self.model.get_video_features(*args, **kwargs)

    def get_audio_features(self, *args, **kwargs):
        return self.model.get_audio_features(*args, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_grid_hw: torch.LongTensor | None = None,
        pixel_values_lowres: torch.FloatTensor | None = None,
        image_grid_hw_lowres: torch.LongTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        beats_features: torch.FloatTensor | None = None,
        audio_chunks: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> OlaCausalLMOutputWithPast:
        r"""
        Multimodal inputs (all optional, as produced by `OlaProcessor`): `pixel_values` / `image_grid_hw` (high-res
        views) with `pixel_values_lowres` / `image_grid_hw_lowres`, `pixel_values_videos` / `video_grid_thw`,
        `input_features` / `beats_features` / `audio_chunks`. See `OlaModel.get_*_features` for shapes.
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`): next-token targets (-100 = ignored).
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            pixel_values=pixel_values,
            image_grid_hw=image_grid_hw,
            pixel_values_lowres=pixel_values_lowres,
            image_grid_hw_lowres=image_grid_hw_lowres,
            pixel_values_videos=pixel_values_videos,
            video_grid_thw=video_grid_thw,
            input_features=input_features,
            beats_features=beats_features,
            audio_chunks=audio_chunks,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size)
        return OlaCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_features=outputs.image_features,
            video_features=outputs.video_features,
            audio_features=outputs.audio_features,
        )

    def prepare_inputs_for_generation(self, input_ids, is_first_iteration: bool | None = False, **kwargs):
        # the multimodal inputs only matter for the prompt; later steps read the cache
        if not is_first_iteration and kwargs.get("use_cache", True):
            for name in _MULTIMODAL_INPUTS:
                kwargs.pop(name, None)
        return super().prepare_inputs_for_generation(input_ids, is_first_iteration=is_first_iteration, **kwargs)


__all__ = [
    "OlaForConditionalGeneration", "OlaModel", "OlaPreTrainedModel", "OryxViTModel", "OryxViTPreTrainedModel",
]
