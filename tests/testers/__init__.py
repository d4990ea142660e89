"""Tiny-model testers, one module per architecture (``testers/<arch>.py`` defines ``TESTERS``: a list of
``TokenizerTester``). The shared runners in ``tests/test_common_tokenizers.py`` (and the Hub tests) are parametrised
over every tester found here, so a new architecture gets all shared checks by adding one module."""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tester_discovery import collect_testers


@dataclass
class TokenizerTester:
    """How to build and exercise one tiny tokenizer configuration.

    name: test id. config_class / model_class: the vistok classes. config_kwargs: tiny config fields.
    image_processor_class: processor to pair with the model (saved next to it in round trips).
    input_shape: (C, H, W) of one image in the model's range; input_range: (low, high) of that range.
    decode_kwargs: extra keyword arguments ``decode``/``forward`` need (tensors built by ``make_decode_kwargs``).
    lora_target_modules: module-name suffixes LoRA wraps in the shared LoRA test.
    discrete: whether ``encode`` returns token ids. num_tokens: tokens per image.
    deterministic_decode: whether two decodes of the same input are equal without extra arguments.
    """

    name: str
    config_class: type
    model_class: type
    config_kwargs: dict
    image_processor_class: type
    input_shape: tuple[int, int, int]
    input_range: tuple[float, float] = (0.0, 1.0)
    make_decode_kwargs: Callable[[int], dict] = field(default=lambda batch_size: {})
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    discrete: bool = True
    num_tokens: int | None = None
    supports_sdpa: bool = True
    extra: dict = field(default_factory=dict)

    def make_config(self, **overrides):
        return self.config_class(**(self.config_kwargs | overrides))

    def make_model(self, seed: int = 0, **overrides):
        torch.manual_seed(seed)
        return self.model_class(self.make_config(**overrides)).eval()

    def make_pixel_values(self, batch_size: int = 2, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        low, high = self.input_range
        return torch.rand(batch_size, *self.input_shape, generator=generator) * (high - low) + low

    def make_image_processor(self):
        _, height, width = self.input_shape
        return self.image_processor_class(size={"shortest_edge": min(height, width)},
                                          crop_size={"height": height, "width": width})


def all_testers() -> list[TokenizerTester]:
    return collect_testers(__name__, __path__)
