"""transformers' VideoLLaMA3 classes with a check of the patch size (checkpoints keep `model_type: video_llama_3`).

transformers 5.24's `VideoLlama3VisionEmbeddings` views `pixel_values` as `[-1, num_channels, patch_size, patch_size]`
without checking that they hold the patches `image_grid_thw` / `video_grid_thw` announce: patches of the wrong length
end in a RuntimeError from an internal view (`shape '[-1, 3, 14, 14]' is invalid ...`) or from the split by the grid,
and a grid side that the merge size does not divide in a RuntimeError from `pixel_unshuffle`. The subclasses here check
the pixels against the grid before the vision tower runs and raise a `ValueError` that names the expected and the
received shape; everything else is transformers' code, unchanged (same weights, same names, same outputs bit for bit).

What is accepted is exactly what the original VideoLLaMA3 encoder (and transformers) compute: the flattened patches of
the processor, `[sum(t * h * w), num_channels * patch_size ** 2]` in its merge-block order, or any tensor with that
many values (both implementations only `view` it into patches), with every grid side divisible by its merge size.

The checks sit in `VideoLlama3Model.get_image_features` / `get_video_features`, the methods every image and video
path calls, before the vision tower runs. The classes keep transformers' names on purpose: `save_pretrained` writes
the class name into config.json's `architectures`, so a checkpoint saved from them still names
`VideoLlama3ForConditionalGeneration`, which plain transformers (without vistok) loads; `TransformersNativeMixin`
makes them load and save the same files as transformers' classes.
"""

import torch
from transformers.models.video_llama_3 import modeling_video_llama_3 as hf_video_llama_3

from .native_subclass import TransformersNativeMixin


def check_video_llama_3_patches(vision_config, pixel_values: torch.Tensor, grid_thw, merge_sizes,
                                names: tuple[str, str, str] = ("pixel_values", "image_grid_thw", "image_merge_sizes"),
                                ) -> None:
    """Raises a ValueError unless `pixel_values` hold the patches `grid_thw` announces.

    `grid_thw` `[num_items, 3]` gives each image's / video's (t, h, w) in patches and `merge_sizes` `[num_items]` its
    merge size; `pixel_values` must hold `sum(t * h * w)` patches of `num_channels * patch_size ** 2` values, and each h
    and w must be divisible by the item's merge size. `names` are the argument names used in the messages (images or
    videos). Shape checks on the small grid tensors only: no copy of the pixels (one device sync for the grid sums,
    which transformers' own `pixel_unshuffle` also needs)."""
    pixels_name, grid_name, merge_name = names
    if grid_thw is None or merge_sizes is None:
        raise ValueError(f"{pixels_name} need {grid_name} and {merge_name} (the processor returns them).")
    if grid_thw.ndim != 2 or grid_thw.shape[1] != 3 or merge_sizes.shape != grid_thw.shape[:1]:
        raise ValueError(
            f"{grid_name} must be [num_items, 3] (t, h, w) and {merge_name} [num_items], got shapes "
            f"{tuple(grid_thw.shape)} and {tuple(merge_sizes.shape)}."
        )
    grid, merges = grid_thw.tolist(), merge_sizes.tolist()
    values_per_patch = vision_config.num_channels * vision_config.patch_size**2
    num_patches = sum(t * h * w for t, h, w in grid)
    if pixel_values.numel() != num_patches * values_per_patch:
        raise ValueError(
            f"{pixels_name} must hold the {num_patches} patches of {grid_name} {grid}, each num_channels x "
            f"patch_size ** 2 = {vision_config.num_channels} x {vision_config.patch_size} ** 2 = {values_per_patch} "
            f"values: expected shape {(num_patches, values_per_patch)}, got shape {tuple(pixel_values.shape)}."
        )
    for (t, h, w), merge in zip(grid, merges):
        if merge < 1 or h % merge or w % merge:
            raise ValueError(
                f"each grid side in {grid_name} must be divisible by its merge size in {merge_name}, got a {h} x {w} "
                f"patch grid with merge size {merge}."
            )


class VideoLlama3Model(TransformersNativeMixin, hf_video_llama_3.VideoLlama3Model):
    """transformers' `VideoLlama3Model` that checks the patches against the grid in `get_image_features` and
    `get_video_features`, the methods every image and video path goes through (`forward`, and
    `VideoLlama3ForConditionalGeneration.get_image_features` / `get_video_features` / `forward`)."""

    def get_image_features(self, pixel_values, image_grid_thw=None, image_merge_sizes=None, **kwargs):
        """Flattened patches -> `pooler_output`, one `[tokens, text_hidden_size]` tensor per image (transformers'
        method, after `check_video_llama_3_patches`)."""
        check_video_llama_3_patches(self.config.vision_config, pixel_values, image_grid_thw, image_merge_sizes)
        return super().get_image_features(pixel_values, image_grid_thw, image_merge_sizes, **kwargs)

    def get_video_features(self, pixel_values_videos, video_grid_thw=None, video_merge_sizes=None, **kwargs):
        """Like `get_image_features`, for videos (messages name the video arguments)."""
        check_video_llama_3_patches(
            self.config.vision_config, pixel_values_videos, video_grid_thw, video_merge_sizes,
            names=("pixel_values_videos", "video_grid_thw", "video_merge_sizes"),
        )
        return super().get_video_features(pixel_values_videos, video_grid_thw, video_merge_sizes, **kwargs)


class VideoLlama3ForConditionalGeneration(
    TransformersNativeMixin, hf_video_llama_3.VideoLlama3ForConditionalGeneration
):
    """transformers' `VideoLlama3ForConditionalGeneration` around vistok's checking `VideoLlama3Model` (see the module
    docstring); parameters, outputs and the saved config are those of transformers' class."""

    def __init__(self, config):
        super().__init__(config)
        # vistok's VideoLlama3Model adds methods only (no state): transformers' inner model becomes one (no rebuild)
        self.model.__class__ = VideoLlama3Model
