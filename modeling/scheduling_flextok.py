"""FlexTok's rectified flow apart from the network: the Euler sampler with CFG/APG guidance used to decode, and the
training objective (noising, nested dropout, null-condition dropout, velocity loss).

Both are small objects in the spirit of diffusers' schedulers: they hold settings and arithmetic, the model holds the
weights. ``x_t = t * noise + (1 - t) * x_0`` and the network predicts the velocity ``noise - x_0``.
"""

import torch
import torch.nn.functional as F

from .configuration_flextok import GUIDANCE_TYPES


def rng_device(generator: torch.Generator | None, device) -> torch.device:
    """Draw on the generator's device, so a CPU generator gives the same numbers wherever the model runs."""
    return generator.device if generator is not None else torch.device(device)


class FlexTokFlowSampler:
    r"""
    Euler integration of the rectified flow from t=1 (noise) to t=0 (VAE latents), with optional guidance.

    Args:
        num_steps (`int`): Euler steps; the timesteps are `num_steps / num_steps, ..., 1 / num_steps`.
        guidance_scale (`float`): 1.0 runs no unconditional branch.
        guidance_type (`str`): `"cfg"` (classifier-free guidance) or `"apg"` (adaptive projected guidance,
            arXiv:2410.02416).
        apg_momentum / apg_norm_threshold / apg_eta (`float`): APG's momentum of the guidance difference, the norm
            it is clipped to (<= 0: no clipping) and the weight of its component parallel to the conditional output.
    """

    def __init__(
        self,
        num_steps: int,
        guidance_scale: float = 1.0,
        guidance_type: str = "cfg",
        apg_momentum: float = 0.0,
        apg_norm_threshold: float = 0.0,
        apg_eta: float = 0.0,
    ):
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}.")
        if guidance_type not in GUIDANCE_TYPES:
            raise ValueError(f"guidance_type must be one of {GUIDANCE_TYPES}, got {guidance_type!r}.")
        self.num_steps = num_steps
        self.guidance_scale = float(guidance_scale)
        self.guidance_type = guidance_type
        self.apg_momentum = apg_momentum
        self.apg_norm_threshold = apg_norm_threshold
        self.apg_eta = apg_eta

    @classmethod
    def from_config(cls, config, num_steps=None, guidance_scale=None, guidance_type=None) -> "FlexTokFlowSampler":
        """The sampler a `FlexTokConfig` describes, with per-call overrides (`None` keeps the config's value)."""
        return cls(
            num_steps=config.num_inference_steps if num_steps is None else num_steps,
            guidance_scale=config.guidance_scale if guidance_scale is None else guidance_scale,
            guidance_type=config.guidance_type if guidance_type is None else guidance_type,
            apg_momentum=config.apg_momentum,
            apg_norm_threshold=config.apg_norm_threshold,
            apg_eta=config.apg_eta,
        )

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0

    def guide(self, cond: torch.Tensor, uncond: torch.Tensor, momentum: torch.Tensor | None):
        """Guided velocity from the conditional and unconditional ones ([B, C, h, w]); returns it with APG's updated
        momentum buffer (one per image; `None` before the first step)."""
        if self.guidance_type == "cfg":
            return uncond + self.guidance_scale * (cond - uncond), momentum
        dims = (1, 2, 3)
        diff = cond - uncond
        momentum = diff if momentum is None else diff + self.apg_momentum * momentum
        diff = momentum
        if self.apg_norm_threshold > 0:
            norm = diff.norm(p=2, dim=dims, keepdim=True)
            diff = diff * torch.minimum(torch.ones_like(diff), self.apg_norm_threshold / norm)
        direction = cond.double()
        direction = direction / direction.norm(p=2, dim=dims, keepdim=True).clamp_min(1e-12)
        parallel = (diff.double() * direction).sum(dim=dims, keepdim=True) * direction
        orthogonal = (diff.double() - parallel).to(cond.dtype)
        update = orthogonal + self.apg_eta * parallel.to(cond.dtype)
        return cond + (self.guidance_scale - 1) * update, momentum

    def sample(self, velocity_fn, noise: torch.Tensor) -> torch.Tensor:
        r"""
        Integrates from `noise` ([B, C, h, w], float32) to t=0.

        `velocity_fn(sample, timesteps)` evaluates the network: `sample` [B', C, h, w] and `timesteps` [B'] where
        B' = 2B when guided (the conditional half first, then the unconditional half, run as one batch), else B.
        """
        sample = noise
        batch_size = sample.shape[0]
        momentum = None
        dt = 1.0 / self.num_steps
        for step in range(self.num_steps, 0, -1):
            sample_in = torch.cat([sample, sample]) if self.guided else sample
            timesteps = torch.full((sample_in.shape[0],), step / self.num_steps, device=sample.device)
            velocity = velocity_fn(sample_in, timesteps).float()
            if self.guided:
                velocity, momentum = self.guide(velocity[:batch_size], velocity[batch_size:], momentum)
            sample = sample - dt * velocity
        return sample


class FlexTokTrainingObjective:
    r"""
    The original training step's randomness and loss: a flow time per image (`"uniform"` or `"logit_normal"`),
    Gaussian noise, nested dropout (how many registers each image keeps: `"uniform"`, `"pow2"` or `"uniform_pow2"`)
    and null-condition dropout with probability `cfg_dropout_prob`; loss = MSE(velocity, noise - x_0).
    """

    def __init__(self, num_tokens: int, timestep_sampling: str, nested_dropout_mode: str, cfg_dropout_prob: float):
        self.num_tokens = num_tokens
        self.timestep_sampling = timestep_sampling
        self.nested_dropout_mode = nested_dropout_mode
        self.cfg_dropout_prob = cfg_dropout_prob

    @classmethod
    def from_config(cls, config) -> "FlexTokTrainingObjective":
        return cls(
            config.num_latent_tokens,
            config.training_timestep_sampling,
            config.nested_dropout_mode,
            config.cfg_dropout_prob,
        )

    def sample_timesteps(self, batch_size: int, generator, device) -> torch.Tensor:
        draw_device = rng_device(generator, device)
        if self.timestep_sampling == "uniform":
            timesteps = torch.rand(batch_size, generator=generator, device=draw_device)
        else:
            timesteps = torch.sigmoid(torch.randn(batch_size, generator=generator, device=draw_device))
        return timesteps.to(device)

    def sample_keep_k(self, batch_size: int, generator, device) -> torch.Tensor:
        """Registers kept per image, LongTensor [B] in [1, num_tokens]."""
        maximum, mode = self.num_tokens, self.nested_dropout_mode
        draw_device = rng_device(generator, device)
        if mode == "pow2":
            # as in the original, only training needs this: inference takes any register count
            if maximum & (maximum - 1):
                raise ValueError(
                    f"nested_dropout_mode='pow2' samples powers of two up to num_latent_tokens, which must then be a "
                    f"power of two; got {maximum}. Use 'uniform' or 'uniform_pow2' to train this model."
                )
            exponents = torch.randint(0, maximum.bit_length(), (batch_size,), generator=generator, device=draw_device)
            keep_k = 2**exponents
        else:
            keep_k = torch.randint(1, maximum + 1, (batch_size,), generator=generator, device=draw_device)
            if mode == "uniform_pow2":
                keep_k = torch.tensor([1 << (int(k) - 1).bit_length() for k in keep_k.tolist()]).clamp(max=maximum)
        return keep_k.to(device)

    def sample_null_mask(self, batch_size: int, generator, device) -> torch.Tensor:
        draw_device = rng_device(generator, device)
        return (torch.rand(batch_size, generator=generator, device=draw_device) < self.cfg_dropout_prob).to(device)

    @staticmethod
    def add_noise(clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = t * noise + (1 - t) * x_0, with `timesteps` [B]."""
        sigma = timesteps[:, None, None, None]
        return sigma * noise.float() + (1.0 - sigma) * clean

    @staticmethod
    def loss(velocity: torch.Tensor, clean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(velocity.float(), noise.float() - clean)


__all__ = ["FlexTokFlowSampler", "FlexTokTrainingObjective", "rng_device"]
