"""Tiny-model testers, one module per architecture (``testers/<arch>.py`` defines ``TESTERS``: a list of
``TokenizerTester``). The shared runners in ``tests/test_common_tokenizers.py`` (and the Hub tests) are parametrised
over every tester found here, so a new architecture gets all shared checks by adding one module.

Image and video tokenizers use the same class; ``modality`` says which one a tester is:

* ``"image"``: ``input_shape = (C, H, W)``, inputs ``[B, C, H, W]``, paired with an image processor
  (``image_processor_class``, torchvision backend; its ``<name>Pil`` sibling must exist), output key ``pixel_values``,
  saved as ``preprocessor_config.json``, loaded with ``AutoImageProcessor``, pipeline ``image-tokenization``.
* ``"video"``: ``input_shape = (T, C, H, W)`` (transformers' video layout), inputs ``[B, T, C, H, W]``, paired with a
  video processor (``video_processor_class``, a ``BaseVideoProcessor``) whose ``__call__(videos)`` returns
  ``pixel_values_videos`` and whose ``postprocess(reconstruction, output_type="pil"|"np"|"pt")`` returns per clip a
  list of PIL frames / a uint8 array ``[B, T, H, W, C]`` / a float tensor in [0, 1]; saved as
  ``video_preprocessor_config.json``, loaded with ``AutoVideoProcessor``, pipeline ``video-tokenization``.

What the model must do for the shared bad-input checks (``ValueError`` naming what was expected and what it got):

* images: the messages of ``VisualTokenizerMixin.validate_pixel_values`` / ``validate_tokens`` / ``validate_latents``;
* videos: a non-tensor -> message contains ``torch.Tensor``; an integer tensor -> ``floating point``; a tensor that is
  not 5-D -> ``[batch, frames, channels, height, width]``; wrong channels -> ``"<C> channels"``; every frame count in
  ``bad_num_frames`` -> ``frames`` and the count it got; a ``bad_spatial_size`` clip -> ``"<h>x<w>"`` (what it got);
  tokens outside the vocabulary -> ``token ids must be in [0, <vocab_size>)``; one token too many (last dimension)
  -> ``tokens``; tokens / latents with the wrong number of dimensions -> ``token_layout`` / ``latent_layout``.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tester_discovery import collect_testers


@dataclass(kw_only=True)
class TokenizerTester:
    """How to build and exercise one tiny tokenizer configuration (all fields are keyword-only).

    Model:
      name: test id. config_class / model_class: the vistok classes (``model_class`` may be a transformers class for
        systems that live in transformers). config_kwargs: tiny config fields.
      modality: ``"image"`` or ``"video"`` (see the module docstring for what each implies).
      input_shape: one sample in the model's layout: (C, H, W) for images, (T, C, H, W) for videos.
      input_range: (low, high) of the model's input range (what the processor produces).
    Processor:
      image_processor_class: image processor paired with an image model (saved next to it in round trips).
      video_processor_class: video processor paired with a video model.
      processor_kwargs: constructor arguments of the processor; by default images get a shortest-edge resize and a
        center crop to (H, W), videos get ``{}`` (the tester must then make the defaults match ``input_shape``).
      raw_video_shape: (frames, height, width) of a uint8 clip that the video processor turns into ``input_shape``
        (frame sampling + resize + crop); default (2T, H + 9, W + 5).
    Tokens:
      discrete: whether ``encode`` returns token ids.
      num_tokens: tokens per sample of 1D tokenizers (checked against ``latents.shape[1]``).
      token_shape: per-sample shape of ``tokens`` when it is not ``(num_tokens,)`` (e.g. ``(t, h, w)`` for a grid
        video tokenizer); checked exactly when given.
      latent_shape: per-sample shape of ``latents`` when they are not ``[num_tokens, latent_dim]``; checked exactly
        when given (otherwise latents must be 3-D).
      token_layout / latent_layout: the layout strings the decode errors name for a tensor of the wrong rank.
      variable_token_grid: the tokenizer takes grids of any size (Emu3), so one token more is no error.
      accepts_images: a video tokenizer that also takes image batches (Emu3): a clip, token grid or latent without
        its batch dimension is then a valid image batch, so the wrong-rank video checks do not apply.
    Calls:
      make_decode_kwargs(batch_size): extra keyword arguments ``decode``/``forward`` need (fresh tensors/generators).
      lora_target_modules: module-name suffixes LoRA wraps in the shared LoRA test.
      supports_sdpa: whether the eager vs sdpa check applies.
      bad_num_frames: frame counts ``encode`` must reject (videos; default ``(T + 1,)``).
      bad_spatial_size: an (h, w) ``encode`` must reject (default ``(H + 8, W)``).
      extra: free-form data for a system's own tests.
    """

    name: str
    config_class: type
    model_class: type
    config_kwargs: dict
    input_shape: tuple[int, ...]
    modality: str = "image"
    input_range: tuple[float, float] = (0.0, 1.0)
    image_processor_class: type | None = None
    video_processor_class: type | None = None
    processor_kwargs: dict | None = None
    raw_video_shape: tuple[int, int, int] | None = None
    make_decode_kwargs: Callable[[int], dict] = field(default=lambda batch_size: {})
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    discrete: bool = True
    num_tokens: int | None = None
    token_shape: tuple[int, ...] | None = None
    latent_shape: tuple[int, ...] | None = None
    token_layout: str = "[batch, num_tokens]"
    latent_layout: str = "[batch, num_tokens, latent_dim]"
    variable_token_grid: bool = False
    accepts_images: bool = False
    supports_sdpa: bool = True
    bad_num_frames: tuple[int, ...] | None = None
    bad_spatial_size: tuple[int, int] | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        expected_rank = {"image": 3, "video": 4}.get(self.modality)
        if expected_rank is None:
            raise ValueError(f"{self.name}: modality must be 'image' or 'video', got {self.modality!r}.")
        if len(self.input_shape) != expected_rank:
            raise ValueError(
                f"{self.name}: a {self.modality} tester needs input_shape of length {expected_rank}, got {self.input_shape}."
            )
        processor_class = self.image_processor_class if self.is_image else self.video_processor_class
        if processor_class is None:
            raise ValueError(f"{self.name}: a {self.modality} tester needs {self.modality}_processor_class.")

    # -- layout -------------------------------------------------------------------------------------------------
    @property
    def is_image(self) -> bool:
        return self.modality == "image"

    @property
    def is_video(self) -> bool:
        return self.modality == "video"

    @property
    def num_frames(self) -> int | None:
        return self.input_shape[0] if self.is_video else None

    @property
    def channels_height_width(self) -> tuple[int, int, int]:
        return tuple(self.input_shape[-3:])

    # -- processor ----------------------------------------------------------------------------------------------
    @property
    def processor_class(self) -> type:
        return self.image_processor_class if self.is_image else self.video_processor_class

    @property
    def auto_processor_class(self) -> type:
        """``AutoImageProcessor`` or ``AutoVideoProcessor``."""
        from transformers import AutoImageProcessor, AutoVideoProcessor

        return AutoImageProcessor if self.is_image else AutoVideoProcessor

    @property
    def processor_config_file(self) -> str:
        return "preprocessor_config.json" if self.is_image else "video_preprocessor_config.json"

    @property
    def processor_output_key(self) -> str:
        return "pixel_values" if self.is_image else "pixel_values_videos"

    @property
    def pipeline_task(self) -> str:
        return "image-tokenization" if self.is_image else "video-tokenization"

    def make_processor(self):
        kwargs = self.processor_kwargs
        if kwargs is None:
            _, height, width = self.channels_height_width
            kwargs = (
                {"size": {"shortest_edge": min(height, width)}, "crop_size": {"height": height, "width": width}}
                if self.is_image
                else {}
            )
        return self.processor_class(**kwargs)

    def make_image_processor(self):
        if not self.is_image:
            raise TypeError(f"{self.name} is a video tester; use make_processor().")
        return self.make_processor()

    def preprocess(self, processor, inputs) -> torch.Tensor:
        """Runs ``processor`` on one image (PIL) or one clip (list of PIL frames / uint8 array [T, H, W, C]) and
        returns the model input [1, ...]."""
        if self.is_image:
            return processor(inputs, return_tensors="pt")["pixel_values"]
        return processor(videos=[inputs], return_tensors="pt")["pixel_values_videos"]

    # -- model and inputs ---------------------------------------------------------------------------------------
    def make_config(self, **overrides):
        return self.config_class(**(self.config_kwargs | overrides))

    def make_model(self, seed: int = 0, **overrides):
        torch.manual_seed(seed)
        return self.model_class(self.make_config(**overrides)).eval()

    def make_pixel_values(self, batch_size: int = 2, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        low, high = self.input_range
        return torch.rand(batch_size, *self.input_shape, generator=generator) * (high - low) + low

    def resolved_bad_num_frames(self) -> tuple[int, ...]:
        if not self.is_video:
            return ()
        return (self.num_frames + 1,) if self.bad_num_frames is None else self.bad_num_frames

    def resolved_bad_spatial_size(self) -> tuple[int, int]:
        _, height, width = self.channels_height_width
        return (height + 8, width) if self.bad_spatial_size is None else self.bad_spatial_size

    def resolved_raw_video_shape(self) -> tuple[int, int, int]:
        _, height, width = self.channels_height_width
        return self.raw_video_shape or (2 * self.num_frames, height + 9, width + 5)


def all_testers() -> list[TokenizerTester]:
    return collect_testers(__name__, __path__)

