"""`OlaProcessor`: Ola's image/video processor, audio feature extractor and Qwen2 tokenizer behind one call, with
a ChatML chat template and placeholder expansion per modality.

Every `<image>`, `<speech>` and `<video>` in the text is replaced by as many copies of itself as the item has
embeddings; the model then fills each modality's placeholders with that modality's items in prompt order. (The
original fills placeholders with all images first and then all audio clips, whatever their order in the prompt; the
results agree whenever images come before audio, which is how the original prompts are written.)
"""

import numpy as np
from transformers import BatchFeature, ProcessorMixin


OLA_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<image>\\n' }}"
    "{%- elif item['type'] == 'audio' -%}{{ '<speech>\\n' }}"
    "{%- elif item['type'] == 'video' -%}{{ '<video>\\n' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


class OlaProcessor(ProcessorMixin):
    r"""
    Args:
        image_processor (`OlaImageProcessor`): images (two views) and video frames.
        feature_extractor (`OlaFeatureExtractor`): Whisper and BEATs features of 30 s windows.
        tokenizer: the Qwen2 tokenizer with the three placeholder tokens added.
        chat_template (`str`): ChatML with `{"type": "image" | "audio" | "video" | "text"}` content items.
        image_token / audio_token / video_token (`str`): placeholder strings in the text.
        audio_downsample_rate (`int`): encoder frames per audio token (the model's `audio_downsample_rate`).
    """

    def __init__(
        self,
        image_processor=None,
        feature_extractor=None,
        tokenizer=None,
        chat_template=None,
        image_token: str = "<image>",
        audio_token: str = "<speech>",
        video_token: str = "<video>",
        audio_downsample_rate: int = 10,
    ):
        self.image_token, self.audio_token, self.video_token = image_token, audio_token, video_token
        self.audio_downsample_rate = audio_downsample_rate
        super().__init__(
            image_processor, feature_extractor, tokenizer, chat_template=chat_template or OLA_CHAT_TEMPLATE
        )
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.audio_token_id = tokenizer.convert_tokens_to_ids(audio_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(video_token)

    def num_image_tokens(self, grid_hw_lowres, grid_hw) -> int:
        """begin + low-res rows (w/2 + 1 each) + sep + high-res rows + end."""
        (hl, wl), (hh, wh) = grid_hw_lowres, grid_hw
        return 3 + (hl // 2) * (wl // 2 + 1) + (hh // 2) * (wh // 2 + 1)

    def num_video_tokens(self, grid_thw) -> int:
        """begin + per frame (rows with newlines + sep) + end."""
        t, h, w = grid_thw
        return 2 + t * ((h // 2) * (w // 2 + 1) + 1)

    def num_audio_tokens(self, num_windows: int) -> int:
        """begin + per 30 s window (encoder frames // rate + newline) + end; Whisper gives 1500 frames per window
        (BEATs' 1496 are zero-padded to that)."""
        frames = self.feature_extractor.nb_max_frames // 2
        return 2 + num_windows * (frames // self.audio_downsample_rate + 1)

    def _expand(self, texts: list[str], token: str, counts: list[int], name: str) -> list[str]:
        found = sum(text.count(token) for text in texts)
        if found != len(counts):
            raise ValueError(f"the text has {found} {token} placeholders but {len(counts)} {name} were given.")
        counts = iter(counts)
        expanded = []
        for text in texts:
            pieces = text.split(token)
            out = pieces[0]
            for piece in pieces[1:]:
                out += token * next(counts) + piece
            expanded.append(out)
        return expanded

    def __call__(self, images=None, text=None, audio=None, videos=None, **kwargs) -> BatchFeature:
        """
        Args:
            images: images (PIL / arrays / tensors), one per `<image>` in prompt order across the batch.
            text (`str` or `list[str]`): prompts with placeholders.
            audio: 16 kHz mono waveforms, one per `<speech>`. videos: lists of frames, one per `<video>`.
            **kwargs: passed to the tokenizer (`padding`, `padding_side`, `return_tensors`, ...).
        """
        if text is None:
            raise ValueError("OlaProcessor needs `text` (with one placeholder per image, audio clip and video).")
        texts = [text] if isinstance(text, str) else list(text)
        return_tensors = kwargs.pop("return_tensors", "pt")
        sampling_rate = kwargs.pop("sampling_rate", None)
        data = {}
        if images is not None:
            image_inputs = self.image_processor.preprocess(images)
            counts = [
                self.num_image_tokens(lo, hi)
                for lo, hi in zip(image_inputs["image_grid_hw_lowres"].tolist(), image_inputs["image_grid_hw"].tolist())
            ]
            texts = self._expand(texts, self.image_token, counts, "images")
            data.update(image_inputs)
        elif any(self.image_token in t for t in texts):
            raise ValueError(f"the text has {self.image_token} placeholders but no images were given.")
        if videos is not None:
            video_inputs = self.image_processor.preprocess_videos(videos)
            counts = [self.num_video_tokens(grid) for grid in video_inputs["video_grid_thw"].tolist()]
            texts = self._expand(texts, self.video_token, counts, "videos")
            data.update(video_inputs)
        elif any(self.video_token in t for t in texts):
            raise ValueError(f"the text has {self.video_token} placeholders but no videos were given.")
        if audio is not None:
            if isinstance(audio, np.ndarray) and audio.ndim == 1:
                audio = [audio]
            audio_inputs = self.feature_extractor(audio, sampling_rate=sampling_rate)
            counts = [self.num_audio_tokens(n) for n in audio_inputs["audio_chunks"].tolist()]
            texts = self._expand(texts, self.audio_token, counts, "audio clips")
            data.update(audio_inputs)
        elif any(self.audio_token in t for t in texts):
            raise ValueError(f"the text has {self.audio_token} placeholders but no audio was given.")
        data.update(self.tokenizer(texts, return_tensors=return_tensors, **kwargs))
        return BatchFeature(data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return list(
            dict.fromkeys(
                self.tokenizer.model_input_names
                + self.image_processor.model_input_names
                + ["pixel_values_videos", "video_grid_thw"]
                + self.feature_extractor.model_input_names
            )
        )


__all__ = ["OLA_CHAT_TEMPLATE", "OlaProcessor"]
