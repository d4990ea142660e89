"""MAETok's DINOv2 / SigLIP teachers: user-supplied frozen models that give the auxiliary decoders their targets.

A teacher is kept out of the MAETok module tree (it is not saved, moved by ``.to()`` or trained); `MAETokTeacher`
holds it with the preprocessing that turns MAETok's [-1, 1] input into what the teacher expects.
"""

import inspect

import torch
import torch.nn.functional as F
from torch import nn


class MAETokTeacher:
    r"""
    Calls `model(pixel_values=images)` on MAETok's input mapped from [-1, 1] to [0, 1], resized to
    `grid * model.config.patch_size` (bicubic, antialiased) and normalised with `image_mean` / `image_std`; the last
    `grid**2` tokens of its `last_hidden_state` (or of the tensor it returns) are the targets.

    Args:
        model (`Callable`): e.g. a transformers `Dinov2Model` or `SiglipVisionModel`; frozen and put in eval mode.
        image_mean / image_std (`list[float]`): the teacher's normalisation.
    """

    def __init__(self, model, image_mean, image_std, name: str = "teacher"):
        if not callable(model):
            raise ValueError(f"{name}_model must be a callable model, got {type(model).__name__}.")
        if isinstance(model, nn.Module):
            model.eval().requires_grad_(False)
        self.model, self.name = model, name
        self.image_mean, self.image_std = list(image_mean), list(image_std)
        patch = getattr(getattr(model, "config", None), "patch_size", None)
        self.patch_size = patch[0] if isinstance(patch, (tuple, list)) else patch
        forward = getattr(model, "forward", model)
        self.interpolates = "interpolate_pos_encoding" in inspect.signature(forward).parameters

    def preprocess(self, pixel_values: torch.Tensor, grid_size: int) -> torch.Tensor:
        """[B, C, H, W] in [-1, 1] -> the teacher's input."""
        images = pixel_values.float() * 0.5 + 0.5
        if self.patch_size is not None and images.shape[-1] != grid_size * self.patch_size:
            size = grid_size * self.patch_size
            images = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        mean = torch.tensor(self.image_mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.image_std, device=images.device).view(1, -1, 1, 1)
        images = (images - mean) / std
        first_param = next(self.model.parameters(), None) if isinstance(self.model, nn.Module) else None
        if first_param is not None:
            images = images.to(first_param.device, first_param.dtype)
        return images

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor, grid_size: int) -> torch.Tensor:
        """Targets [B, grid_size**2, dim] on the device of `pixel_values`."""
        kwargs = {"interpolate_pos_encoding": True} if self.interpolates else {}
        output = self.model(pixel_values=self.preprocess(pixel_values, grid_size), **kwargs)
        hidden = output if isinstance(output, torch.Tensor) else output.last_hidden_state
        if hidden.ndim != 3 or hidden.shape[1] < grid_size**2:
            raise ValueError(
                f"the {self.name} teacher must return hidden states [batch, >= {grid_size**2}, dim], got "
                f"{tuple(hidden.shape)}."
            )
        return hidden[:, -(grid_size**2) :].to(pixel_values.device)


__all__ = ["MAETokTeacher"]
