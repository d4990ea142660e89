"""Sentence-by-sentence text streaming on top of transformers' streamers, so a speech synthesiser (Ola's release
pairs the model with an external TTS) can start speaking while the model still generates.

```python
from vistok.processing.streaming import SentenceStreamer

streamer = SentenceStreamer(processor.tokenizer, on_sentence=tts.speak, skip_prompt=True, skip_special_tokens=True)
model.generate(**inputs, streamer=streamer, max_new_tokens=256)
```

`on_sentence(sentence)` is called from the generation loop (the same thread) each time a sentence is complete, and
once more with the remainder when generation ends. Hand the text to another thread or queue if synthesis is slow.
"""

import re
from collections.abc import Callable

from transformers import TextStreamer


# a sentence ends at . ! ? ; (or their CJK forms, or a newline), possibly followed by closing quotes/brackets,
# and, for the Latin marks, by whitespace (so "3.5" or "e.g." mid-word does not split)
SENTENCE_END = re.compile(r"(?:[.!?;…]+[\"')\]]*(?=\s)|[。！？；]+[」』”’）]*|\n+)")


class SentenceStreamer(TextStreamer):
    r"""
    A `TextStreamer` that groups the streamed text into sentences.

    Args:
        tokenizer: the tokenizer that decodes the generated ids.
        on_sentence (`Callable[[str], None]`): called with each complete sentence (stripped, never empty).
        skip_prompt (`bool`): do not stream the prompt (what `generate` puts first).
        min_chars (`int`): sentences shorter than this are joined with the next one (avoids speaking "1." alone).
        **decode_kwargs: passed to `tokenizer.decode` (e.g. `skip_special_tokens=True`).
    """

    def __init__(self, tokenizer, on_sentence: Callable[[str], None], skip_prompt: bool = True, min_chars: int = 1,
                 **decode_kwargs):
        super().__init__(tokenizer, skip_prompt=skip_prompt, **decode_kwargs)
        self.on_sentence = on_sentence
        self.min_chars = min_chars
        self.pending = ""

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.pending += text
        start = 0
        for match in SENTENCE_END.finditer(self.pending):
            sentence = self.pending[start : match.end()].strip()
            if len(sentence) >= self.min_chars:
                self.on_sentence(sentence)
                start = match.end()
        self.pending = self.pending[start:]
        if stream_end:
            if self.pending.strip():
                self.on_sentence(self.pending.strip())
            self.pending = ""


__all__ = ["SENTENCE_END", "SentenceStreamer"]
