"""Chat templates (jinja) of the multimodal LLMs whose original releases vistok converts.

Both InternVL2.5 and VideoLLaMA3 use ChatML turns (``<|im_start|>role\\n...<|im_end|>\\n``). The templates write the
processor's placeholder for every ``{"type": "image"}`` / ``{"type": "video"}`` message part; the processor then
expands each placeholder into the item's feature tokens.
"""

# the default system message of the original InternVL2.5 conversation template (`internvl2_5`)
INTERNVL2_5_SYSTEM_MESSAGE = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)


def chatml_template(image_placeholder: str, video_placeholder: str, default_system_message: str | None = None) -> str:
    """ChatML turns; each image / video part becomes its placeholder; ``default_system_message`` is prepended as a
    system turn when the conversation starts without one."""
    system = (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n" + default_system_message + "<|im_end|>\n{% endif %}"
        if default_system_message else ""
    )
    return system + (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}" + image_placeholder +
        "{% elif part['type'] == 'video' %}" + video_placeholder +
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def internvl2_5_chat_template(default_system_message: str | None = INTERNVL2_5_SYSTEM_MESSAGE) -> str:
    """An image is ``<IMG_CONTEXT>`` (InternVLProcessor wraps it in ``<img>...</img>`` with the tile tokens), a video
    ``<video>`` (one ``FrameN: <img>...</img>`` line per frame), each on its own line as in the original prompts."""
    return chatml_template("<IMG_CONTEXT>\n", "<video>\n", default_system_message)


def videollama3_chat_template(image_token: str = "<|image_pad|>", video_token: str = "<|video_pad|>") -> str:
    """An image is ``image_token`` and a video ``video_token`` (VideoLlama3Processor expands the latter to
    ``Time 0.0s:<tokens>,Time 1.0s:<tokens>,...``), each followed by a newline like the original ``<image>\\n``.
    Converted releases keep the original ``<image>`` token for images."""
    return chatml_template(image_token + "\n", video_token + "\n")
