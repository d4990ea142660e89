"""transformers' InternVL classes with a check of the tile size (InternVL2.5 checkpoints keep `model_type: internvl`).

transformers 5.24's `InternVLModel.get_image_features` reshapes the vision tower's patch tokens into a square grid
without checking that the tiles give one: a tile of the wrong size ends in a RuntimeError from an internal reshape
(`shape '[7, 3, 3, -1]' is invalid ...`), or, when the token count happens to be a square number, in silently scrambled
features. The subclasses here check `pixel_values` before the vision tower runs and raise a `ValueError` that names the
expected and the received shape; everything else is transformers' code, unchanged (same weights, same names, same
outputs bit for bit).

What is accepted is exactly what the original `InternVLChatModel.extract_feature` (and transformers) compute
correctly: tiles `[num_tiles, num_channels, H, W]` whose patch grid `(H // patch_size, W // patch_size)` is square,
with a side that the pixel shuffle (`downsample_ratio`) divides. Tiles of another size than `vision_config.image_size`
are accepted: both implementations interpolate the position embeddings, and a tile of side `S` gives
`(S // patch_size * downsample_ratio) ** 2` tokens. Non-square grids are refused (both implementations reshape them
into a wrong square grid or fail).

The check sits in `InternVLModel.get_image_features`, the one method every image path calls (the model's `forward`,
the generation head's `forward` and `get_image_features`), before the vision tower runs; it reads the tensor's shape
only. The classes keep transformers' names on purpose: `save_pretrained` writes the class name into config.json's
`architectures`, so a checkpoint saved from them still names `InternVLForConditionalGeneration`, which plain
transformers (without vistok) loads; `TransformersNativeMixin` makes them load and save the same files as transformers'
classes.
"""

import torch
from transformers.models.internvl import modeling_internvl as hf_internvl

from .native_subclass import TransformersNativeMixin


def check_internvl_pixel_values(config, pixel_values: torch.Tensor) -> None:
    """Raises a ValueError unless `pixel_values` are tiles the InternVL vision tower and pixel shuffle can process.

    Shape checks only (no copy, no device sync): `pixel_values` must be `[num_tiles, num_channels, H, W]` with a square
    patch grid `H // patch_size == W // patch_size` whose side times `downsample_ratio` is a whole number."""
    vision_config = config.vision_config
    num_channels, patch_size = vision_config.num_channels, vision_config.patch_size
    patch_size = patch_size if isinstance(patch_size, (list, tuple)) else (patch_size, patch_size)
    shape = pixel_values.shape
    if len(shape) == 4 and shape[1] == num_channels:
        grid = (shape[2] // patch_size[0], shape[3] // patch_size[1])
        side_after_shuffle = grid[0] * config.downsample_ratio
        if grid[0] == grid[1] and grid[0] > 0 and side_after_shuffle == int(side_after_shuffle):
            return
        detail = (f"; other square tiles work too if their patch grid side (size // patch_size {patch_size[0]}) times "
                  f"downsample_ratio {config.downsample_ratio} is a whole number), got shape {tuple(shape)}: a "
                  f"{grid[0]} x {grid[1]} patch grid.")
    else:
        detail = f"), got shape {tuple(shape)}."
    image_size = vision_config.image_size
    image_size = image_size if isinstance(image_size, (list, tuple)) else (image_size, image_size)
    raise ValueError(
        f"InternVL expects pixel_values of shape [num_tiles, {num_channels}, {image_size[0]}, {image_size[1]}] "
        f"(tiles of vision_config.image_size, as the image processor makes them{detail}"
    )


class InternVLModel(TransformersNativeMixin, hf_internvl.InternVLModel):
    """transformers' `InternVLModel` that checks the tile size in `get_image_features` (the one place every image path
    goes through: `forward`, and `InternVLForConditionalGeneration.get_image_features` / `forward`) and names the tiles
    when the image placeholders and the features disagree."""

    def get_image_features(self, pixel_values: torch.Tensor, *args, **kwargs):
        """`pixel_values` `[num_tiles, 3, S, S]` -> `pooler_output` `[num_tiles, tokens_per_tile, text_hidden_size]`
        (transformers' method, after `check_internvl_pixel_values`)."""
        check_internvl_pixel_values(self.config, pixel_values)
        return super().get_image_features(pixel_values, *args, **kwargs)

    def get_placeholder_mask(self, input_ids, inputs_embeds: torch.Tensor, image_features: torch.Tensor):
        """transformers' mask of the image placeholders; its token/feature mismatch error also gets the tile count."""
        try:
            return super().get_placeholder_mask(input_ids, inputs_embeds=inputs_embeds, image_features=image_features)
        except ValueError as error:
            num_tiles, tokens_per_tile = image_features.shape[:2]
            raise ValueError(
                f"{error}. pixel_values hold {num_tiles} tiles x {tokens_per_tile} tokens per tile = "
                f"{num_tiles * tokens_per_tile} image features; input_ids need as many image placeholders "
                f"(image_token_id {self.config.image_token_id}), which the processor writes for each tile."
            ) from error


class InternVLForConditionalGeneration(TransformersNativeMixin, hf_internvl.InternVLForConditionalGeneration):
    """transformers' `InternVLForConditionalGeneration` around vistok's checking `InternVLModel` (see the module
    docstring); parameters, outputs and the saved config are those of transformers' class."""

    def __init__(self, config):
        super().__init__(config)
        # vistok's InternVLModel adds methods only (no state): transformers' inner model becomes one (no rebuild)
        self.model.__class__ = InternVLModel
