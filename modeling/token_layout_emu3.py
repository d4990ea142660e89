"""The Emu3 AR-model token layout: vision codes <-> prompt strings / token ids, with validation.

Images, exactly as the released formatter (`Emu3FeatureDataset.format_image_prompt`, baaivision/Emu3) writes them::

    <|image start|>{h}*{w}<|image token|> row_0 EOL row_1 EOL ... row_{h-1} EOL EOF <|image end|>

`h*w` is the token grid, written as ordinary text; every row (the last included) ends with EOL (`<|extra_200|>`) and
the image with EOF (`<|extra_201|>`); visual token k is `<|visual token {k:06d}|>` (id 151854 + k in the release).

Videos (the paper's layout; the release has no video code, so this is vistok's documented choice): the latent frames
follow each other, each laid out like an image (rows + EOL, then EOF), after a meta text that also gives the frame rate
and duration of the clip::

    <|image start|>{h}*{w}*{t}, {fps:g} fps, {duration:g} s<|image token|> frame_0 ... frame_{t-1} <|image end|>
    frame_i = row_0 EOL ... row_{h-1} EOL EOF

`t` counts latent frames (4 video frames each). A one-frame "video" is exactly the image layout apart from the meta
text, so the same parser and generation constraint serve both.
"""

import re
from dataclasses import dataclass

import torch


_META = re.compile(r"^(\d+)\*(\d+)(?:\*(\d+)(?:, ([0-9.]+) fps, ([0-9.]+) s)?)?$")


@dataclass(frozen=True)
class Emu3TokenLayout:
    """Special-token ids and strings of an Emu3 vocabulary (defaults: the released `BAAI/Emu3-*` tokenizer)."""

    visual_token_offset: int = 151854
    codebook_size: int = 32768
    bos_token_id: int = 151849
    eos_token_id: int = 151850
    image_token_id: int = 151851
    boi_token_id: int = 151852
    eoi_token_id: int = 151853
    eol_token_id: int = 151846
    eof_token_id: int = 151847
    pad_token_id: int = 151643

    bos_token = "<|extra_203|>"
    eos_token = "<|extra_204|>"
    image_token = "<|image token|>"
    boi_token = "<|image start|>"
    eoi_token = "<|image end|>"
    eol_token = "<|extra_200|>"
    eof_token = "<|extra_201|>"
    pad_token = "<|endoftext|>"
    visual_token_template = "<|visual token {:06d}|>"

    @classmethod
    def from_vocabulary(cls, vocabulary: dict[str, int]) -> "Emu3TokenLayout":
        """Reads the ids from a token -> id map (`tokenizer.get_vocab()`, `Emu3Config.vocabulary_map`)."""
        names = {
            "bos_token_id": cls.bos_token, "eos_token_id": cls.eos_token, "image_token_id": cls.image_token,
            "boi_token_id": cls.boi_token, "eoi_token_id": cls.eoi_token, "eol_token_id": cls.eol_token,
            "eof_token_id": cls.eof_token, "pad_token_id": cls.pad_token,
        }
        missing = [token for token in [*names.values(), cls.visual_token_template.format(0)] if token not in vocabulary]
        if missing:
            raise ValueError(f"the vocabulary lacks the Emu3 special tokens {missing}.")
        offset = vocabulary[cls.visual_token_template.format(0)]
        size = 0
        while vocabulary.get(cls.visual_token_template.format(size)) == offset + size:
            size += 1
        if any(name.startswith("<|visual token") for name, i in vocabulary.items() if not offset <= i < offset + size):
            raise ValueError("the visual tokens of the vocabulary are not numbered contiguously from "
                             f"{cls.visual_token_template.format(0)} = {offset}.")
        return cls(visual_token_offset=offset, codebook_size=size, **{k: vocabulary[v] for k, v in names.items()})

    # ---------------------------------------------------------------- meta text
    @staticmethod
    def meta_text(height: int, width: int, num_frames: int | None = None, fps: float | None = None,
                  duration: float | None = None) -> str:
        """`"{h}*{w}"` for images; `"{h}*{w}*{t}"` plus `", {fps} fps, {duration} s"` when known for videos."""
        if num_frames is None:
            return f"{height}*{width}"
        text = f"{height}*{width}*{num_frames}"
        if fps is not None or duration is not None:
            if fps is None or duration is None:
                raise ValueError("give both fps and duration (or neither) for the video meta text.")
            text += f", {fps:g} fps, {duration:g} s"
        return text

    @staticmethod
    def parse_meta_text(text: str) -> dict:
        """Inverse of `meta_text`: {"height", "width", "num_frames" (None for images), "fps", "duration"}."""
        match = _META.match(text.strip())
        if match is None:
            raise ValueError(f"meta text {text!r} is neither 'h*w' (image) nor 'h*w*t[, fps fps, duration s]' (video).")
        height, width, frames, fps, duration = match.groups()
        return {"height": int(height), "width": int(width), "num_frames": int(frames) if frames else None,
                "fps": float(fps) if fps else None, "duration": float(duration) if duration else None}

    # ---------------------------------------------------------------- codes -> prompt
    def _grid(self, codes) -> torch.Tensor:
        codes = torch.as_tensor(codes)
        if codes.ndim not in (2, 3) or codes.is_floating_point():
            raise ValueError(f"codes must be an integer grid [height, width] or [frames, height, width], got "
                             f"{tuple(codes.shape)} of dtype {codes.dtype}.")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"codes must be in [0, {self.codebook_size}), got values in [{int(codes.min())}, "
                             f"{int(codes.max())}].")
        return codes if codes.ndim == 3 else codes[None]

    def vision_ids(self, codes) -> torch.LongTensor:
        """The ids that follow the meta text: `<|image token|>`, the frames (rows + EOL, EOF), `<|image end|>`."""
        frames = self._grid(codes).long().cpu()
        num_frames, height, width = frames.shape
        rows = torch.cat([frames + self.visual_token_offset, torch.full((num_frames, height, 1), self.eol_token_id)], -1)
        body = torch.cat([rows.reshape(num_frames, -1), torch.full((num_frames, 1), self.eof_token_id)], -1)
        return torch.cat([torch.tensor([self.image_token_id]), body.flatten(), torch.tensor([self.eoi_token_id])])

    def prompt(self, codes, fps: float | None = None, duration: float | None = None) -> str:
        """The vision part of a training/chat sequence as text (tokenize with the Emu3 tokenizer). `codes` [h, w] is
        an image (meta `h*w`), [t, h, w] a video (meta `h*w*t[, fps, duration]`)."""
        codes = torch.as_tensor(codes)
        frames = self._grid(codes)
        num_frames = frames.shape[0] if codes.ndim == 3 else None
        meta = self.meta_text(frames.shape[1], frames.shape[2], num_frames, fps, duration)
        rows = []
        for frame in frames.tolist():
            rows.extend("".join(self.visual_token_template.format(k) for k in row) + self.eol_token for row in frame)
            rows.append(self.eof_token)
        return f"{self.boi_token}{meta}{self.image_token}{''.join(rows)}{self.eoi_token}"

    def generation_prompt(self, text: str, height: int, width: int, num_frames: int | None = None,
                          fps: float | None = None, duration: float | None = None) -> str:
        """`bos + text + <|image start|>{meta}<|image token|>`: the prompt from which the model generates codes."""
        meta = self.meta_text(height, width, num_frames, fps, duration)
        return f"{self.bos_token}{text}{self.boi_token}{meta}{self.image_token}"

    # ---------------------------------------------------------------- generated ids -> codes
    def codes_from_ids(self, ids, height: int, width: int, num_frames: int | None = None) -> torch.LongTensor:
        """Reads the codes after the last `<|image token|>` of `ids` (1D) and checks the layout: `width` visual tokens
        then EOL per row, EOF after `height` rows, `<|image end|>` after the last frame. Returns [h, w] for an image
        (`num_frames=None`), [t, h, w] for a video."""
        ids = torch.as_tensor(ids).flatten().cpu()
        starts = (ids == self.image_token_id).nonzero()
        if len(starts) == 0:
            raise ValueError(f"no <|image token|> (id {self.image_token_id}) in the sequence: it holds no image.")
        body = ids[int(starts[-1]) + 1:].tolist()
        frames = num_frames or 1
        expected_length = frames * (height * (width + 1) + 1) + 1
        codes, position = [], 0

        def expect(token_id, what):
            nonlocal position
            got = body[position] if position < len(body) else None
            if got != token_id:
                raise ValueError(f"expected {what} (id {token_id}) at offset {position} after <|image token|>, got "
                                 f"{'the end of the sequence' if got is None else f'id {got}'} (layout: {frames} "
                                 f"frame(s) of {height} rows of {width} visual tokens + EOL, EOF per frame, then "
                                 f"<|image end|>; {expected_length} tokens).")
            position += 1

        for frame in range(frames):
            for row in range(height):
                values = body[position:position + width]
                bad = [i for i, v in enumerate(values) if not 0 <= v - self.visual_token_offset < self.codebook_size]
                if len(values) < width or bad:
                    where = position + (bad[0] if bad else len(values))
                    raise ValueError(f"frame {frame}, row {row}: expected {width} visual tokens (ids "
                                     f"{self.visual_token_offset}..{self.visual_token_offset + self.codebook_size - 1}), "
                                     f"got a non-visual id or the end of the sequence at offset {where}.")
                codes.append([v - self.visual_token_offset for v in values])
                position += width
                expect(self.eol_token_id, f"EOL after row {row} of frame {frame}")
            expect(self.eof_token_id, f"EOF after frame {frame}")
        expect(self.eoi_token_id, "<|image end|>")
        grid = torch.tensor(codes, dtype=torch.long).view(frames, height, width)
        return grid if num_frames is not None else grid[0]


__all__ = ["Emu3TokenLayout"]
