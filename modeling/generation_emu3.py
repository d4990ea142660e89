"""Emu3 visual generation with transformers' `Emu3ForConditionalGeneration.generate`: the layout constraint on the
generated tokens, classifier-free guidance in ONE batched forward per step, and codes -> pixels.

The original (`image_generation.py`, baaivision/Emu3) constrains tokens with `PrefixConstrainedLogitsProcessor` and
guides with `UnbatchedClassifierFreeGuidanceLogitsProcessor`, which runs a second forward of the whole 8B model for the
negative prompt at every step. Here the conditional and unconditional prompts are rows of one left-padded batch
`[conditional; unconditional]`: the model runs once per step on both, `Emu3ClassifierFreeGuidanceLogitsProcessor`
mixes the two halves' log-probabilities (`uncond + scale * (cond - uncond)`, as the unbatched processor) and writes the
result into both halves, and `Emu3SamplingLogitsProcessor(paired=True)` draws one token per pair, so both rows continue
with the same token (greedy decoding needs no extra step: equal scores give equal argmaxes).
"""

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TopKLogitsWarper

from .token_layout_emu3 import Emu3TokenLayout


class Emu3VisualLayoutLogitsProcessor(LogitsProcessor):
    r"""
    Forces the vision layout after the last `<|image token|>` of each row: `width` visual tokens then EOL per row,
    EOF after `height` rows (per frame), `<|image end|>` after `num_frames` frames, then EOS, then padding. Rows
    without an `<|image token|>` are left alone. Vectorised over the batch (the original's
    `Emu3PrefixConstrainedLogitsHelper` builds Python lists of 32768 allowed ids per row and step).
    """

    def __init__(self, layout: Emu3TokenLayout, height: int, width: int, num_frames: int = 1):
        self.layout, self.height, self.width, self.num_frames = layout, height, width, num_frames
        self.frame_length = height * (width + 1) + 1

    def allowed(self, offset: int) -> int | None:
        """The one id allowed at `offset` (1 = first token after `<|image token|>`), or None for any visual token."""
        layout = self.layout
        end = self.num_frames * self.frame_length
        if offset > end:
            return {1: layout.eoi_token_id, 2: layout.eos_token_id}.get(offset - end, layout.pad_token_id)
        within = (offset - 1) % self.frame_length + 1
        if within == self.frame_length:
            return layout.eof_token_id
        return layout.eol_token_id if within % (self.width + 1) == 0 else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        is_start = input_ids == self.layout.image_token_id
        has_start = is_start.any(dim=1)
        length = input_ids.shape[1]
        last_start = length - 1 - is_start.flip(1).int().argmax(dim=1)
        offsets = length - last_start
        mask = torch.full_like(scores, float("-inf"))
        for row in has_start.nonzero().flatten().tolist():
            token = self.allowed(int(offsets[row]))
            if token is None:
                start = self.layout.visual_token_offset
                mask[row, start:start + self.layout.codebook_size] = 0
            else:
                mask[row, token] = 0
        mask[~has_start] = 0
        return scores + mask


class Emu3ClassifierFreeGuidanceLogitsProcessor(LogitsProcessor):
    r"""
    Classifier-free guidance over a batch laid out as `[conditional rows; unconditional rows]`: both halves get
    `log_softmax(uncond) + guidance_scale * (log_softmax(cond) - log_softmax(uncond))`, the formula of transformers'
    `UnbatchedClassifierFreeGuidanceLogitsProcessor`, from one forward of the batch. Put it first in the list.
    """

    def __init__(self, guidance_scale: float):
        self.guidance_scale = guidance_scale

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] % 2:
            raise ValueError(f"classifier-free guidance needs [conditional; unconditional] rows, got an odd batch of "
                             f"{scores.shape[0]}.")
        conditional, unconditional = scores.log_softmax(dim=-1).chunk(2)
        guided = unconditional + self.guidance_scale * (conditional - unconditional)
        return torch.cat([guided, guided])


class Emu3SamplingLogitsProcessor(LogitsProcessor):
    r"""
    Samples the next token inside the processor list (last in the list, with `do_sample=False`), from
    `softmax(scores)`, with an optional `torch.Generator` for reproducible draws. With `paired=True` (classifier-free
    guidance) one token is drawn per (conditional, unconditional) pair from the conditional row and given to both rows.
    Returns scores that make greedy decoding pick the drawn tokens.
    """

    def __init__(self, generator: torch.Generator | None = None, paired: bool = False):
        self.generator, self.paired = generator, paired

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = scores[: scores.shape[0] // 2] if self.paired else scores
        tokens = torch.multinomial(rows.float().softmax(dim=-1), 1, generator=self.generator)
        tokens = tokens.repeat(2, 1) if self.paired else tokens
        return torch.full_like(scores, float("-inf")).scatter(1, tokens, 0.0)


def _left_pad(sequences: list[torch.Tensor], pad_id: int) -> tuple[torch.LongTensor, torch.LongTensor]:
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, length - len(sequence):] = sequence
        mask[row, length - len(sequence):] = 1
    return ids, mask


@torch.no_grad()
def generate_vision_codes(
    model, prompt_ids, height: int, width: int, num_frames: int | None = None, negative_prompt_ids=None,
    guidance_scale: float = 1.0, layout: Emu3TokenLayout | None = None, do_sample: bool = False, top_k: int | None = None,
    generator: torch.Generator | None = None, **generate_kwargs,
) -> torch.LongTensor:
    r"""
    Generates vision codes with `model.generate` (an `Emu3ForConditionalGeneration`).

    Args:
        prompt_ids (list of 1D `torch.LongTensor`): prompts ending with `<|image start|>{meta}<|image token|>`
            (`Emu3TokenLayout.generation_prompt`, tokenized).
        height, width, num_frames: the token grid to generate (`num_frames=None`: an image).
        negative_prompt_ids (list of 1D `torch.LongTensor`, *optional*): unconditional prompts, one per prompt, also
            ending with the image prefix; used when `guidance_scale != 1` in one batched forward per step.
        do_sample, top_k, generator: sampling (greedy by default), as the original's `TopKLogitsWarper(2048)`.

    Returns:
        `torch.LongTensor` of shape `(batch, height, width)` or `(batch, num_frames, height, width)`.
    """
    layout = layout or Emu3TokenLayout()
    prompts = [torch.as_tensor(p).flatten() for p in prompt_ids]
    guided = guidance_scale != 1.0
    if guided:
        if negative_prompt_ids is None or len(negative_prompt_ids) != len(prompts):
            raise ValueError(f"guidance_scale={guidance_scale} needs one negative prompt per prompt ({len(prompts)}).")
        prompts = prompts + [torch.as_tensor(p).flatten() for p in negative_prompt_ids]
    input_ids, attention_mask = _left_pad(prompts, layout.pad_token_id)
    processors = LogitsProcessorList()
    if guided:
        processors.append(Emu3ClassifierFreeGuidanceLogitsProcessor(guidance_scale))
    processors.append(Emu3VisualLayoutLogitsProcessor(layout, height, width, num_frames or 1))
    if top_k is not None:
        processors.append(TopKLogitsWarper(top_k))
    if do_sample:
        processors.append(Emu3SamplingLogitsProcessor(generator, paired=guided))
    frames = num_frames or 1
    device = model.device
    output = model.generate(
        input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), logits_processor=processors,
        do_sample=False, max_new_tokens=frames * (height * (width + 1) + 1) + 1,
        pad_token_id=layout.pad_token_id, eos_token_id=layout.eos_token_id, **generate_kwargs,
    )
    rows = output[: len(prompt_ids)]
    return torch.stack([layout.codes_from_ids(row, height, width, num_frames) for row in rows]).to(device)


__all__ = [
    "Emu3ClassifierFreeGuidanceLogitsProcessor", "Emu3SamplingLogitsProcessor", "Emu3VisualLayoutLogitsProcessor",
    "generate_vision_codes",
]
