"""Chat templates (jinja) of the multimodal LLMs whose original releases vistok converts.

The templates write the processor's placeholder for every ``{"type": "image"}`` / ``{"type": "video"}`` message part;
the processor then expands each placeholder into the item's feature tokens.
"""

# InternVL2.5 (``template: internvl2_5`` of the original code): ChatML turns; an image is ``<IMG_CONTEXT>`` (the
# processor wraps it in ``<img>...</img>`` with 256 context tokens per tile), a video ``<video>`` (one
# ``FrameN: <img>...</img>`` line per frame). The original prepends its default system message when the conversation
# has none.
INTERNVL2_5_SYSTEM_MESSAGE = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)


def internvl2_5_chat_template(default_system_message: str | None = INTERNVL2_5_SYSTEM_MESSAGE) -> str:
    system = (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n" + default_system_message + "<|im_end|>\n{% endif %}"
        if default_system_message else ""
    )
    return system + (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}<IMG_CONTEXT>\n"
        "{% elif part['type'] == 'video' %}<video>\n"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


# VideoLLaMA3: ChatML turns; an image is ``<|image_pad|>`` and a video ``<|video_pad|>`` (the processor expands it to
# ``Time 0.0s:<pads>,Time 1.0s:<pads>,...``), each followed by a newline like the original ``<image>\n``.
VIDEOLLAMA3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|image_pad|>\n"
    "{% elif part['type'] == 'video' %}<|video_pad|>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
