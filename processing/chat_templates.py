"""Chat templates (jinja) of the multimodal LLMs whose original releases vistok converts.

Both InternVL2.5 and VideoLLaMA3 use ChatML turns (``<|im_start|>role\\n...<|im_end|>\\n``). The templates write the
processor's placeholder for every ``{"type": "image"}`` / ``{"type": "video"}`` message part; the processor then
expands each placeholder into the item's feature tokens.
"""

# the default system message of the original InternVL2.5 conversation template (`internvl2_5`)
INTERNVL2_5_SYSTEM_MESSAGE = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)
# the default system message of InternVL's older ChatML templates (`Hermes-2`, `internlm2-chat`)
INTERNVL_HERMES_SYSTEM_MESSAGE = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
)
#: InternVL conversation templates (the original config's ``template``) -> (default system message, text after each
#: ``<|im_end|>``): `internvl2_5` ends every turn with a newline, `Hermes-2` / `internlm2-chat` (checkpoints fine-tuned
#: from InternVL 1.5 / 2) with nothing
INTERNVL_CONVERSATION_TEMPLATES = {
    "internvl2_5": (INTERNVL2_5_SYSTEM_MESSAGE, "\n"),
    "Hermes-2": (INTERNVL_HERMES_SYSTEM_MESSAGE, ""),
    "internlm2-chat": (INTERNVL_HERMES_SYSTEM_MESSAGE, ""),
}


def chatml_template(image_placeholder: str, video_placeholder: str, default_system_message: str | None = None,
                    turn_separator: str = "\n") -> str:
    """ChatML turns, each followed by ``turn_separator``; each image / video part becomes its placeholder;
    ``default_system_message`` is prepended as a system turn when the conversation starts without one."""
    system = ""
    if default_system_message:
        system = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\n" + default_system_message
                  + "<|im_end|>" + turn_separator + "{% endif %}")
    return system + (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}" + image_placeholder +
        "{% elif part['type'] == 'video' %}" + video_placeholder +
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<|im_end|>" + turn_separator + "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def internvl2_5_chat_template(default_system_message: str | None = INTERNVL2_5_SYSTEM_MESSAGE,
                              conversation_template: str = "internvl2_5") -> str:
    """An image is ``<IMG_CONTEXT>`` (InternVLProcessor wraps it in ``<img>...</img>`` with the tile tokens), a video
    ``<video>`` (one ``FrameN: <img>...</img>`` line per frame), each on its own line as in the original prompts;
    turns end as in the original ``conversation_template`` (a key of ``INTERNVL_CONVERSATION_TEMPLATES``)."""
    turn_separator = INTERNVL_CONVERSATION_TEMPLATES[conversation_template][1]
    return chatml_template("<IMG_CONTEXT>\n", "<video>\n", default_system_message, turn_separator)


def videollama3_chat_template(image_token: str = "<|image_pad|>", video_token: str = "<|video_pad|>") -> str:
    """An image is ``image_token`` and a video ``video_token`` (VideoLlama3Processor expands the latter to
    ``Time 0.0s:<tokens>,Time 1.0s:<tokens>,...``), each followed by a newline like the original ``<image>\\n``.
    Converted releases keep the original ``<image>`` token for images."""
    return chatml_template(image_token + "\n", video_token + "\n")


# LLaVA-Mini: the Llama-3.1 chat format as rendered by the release's tokenizer (with its default date lines) and the
# original's default system prompt (`conv_llava_llama_3_1`); visual items become `<image>` / `<video>` followed by a
# newline.
LLAVA_MINI_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)
LLAVA_MINI_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- if messages[0]['content'] is string %}{%- set system = messages[0]['content'] %}"
    "{%- else %}{%- set system = messages[0]['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join('') %}{%- endif %}"
    "{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system = '" + LLAVA_MINI_SYSTEM_PROMPT + "' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: December 2023\\n"
    "Today Date: 26 Jul 2024\\n\\n' + system + '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] | trim }}"
    "{%- else %}{%- for item in message['content'] %}"
    "{%- if item['type'] == 'image' %}{{- '<image>\\n' }}"
    "{%- elif item['type'] == 'video' %}{{- '<video>\\n' }}"
    "{%- elif item['type'] == 'text' %}{{- item['text'] | trim }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


# Emu3-Chat: the single-turn prompt of the original processor (`mode="U"`), "You are a helpful assistant. USER:
# {images}{text}. ASSISTANT:", with `<image>` for each image (Emu3Processor expands it to the image's layout;
# Emu3Processor adds the bos token itself). A system message replaces the default one; earlier assistant turns end
# with the eos token `<|extra_204|>` (the release shows no multi-turn format: this is vistok's choice).
EMU3_SYSTEM_MESSAGE = "You are a helpful assistant."
EMU3_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- if messages[0]['content'] is string %}{{- messages[0]['content'] }}"
    "{%- else %}{{- messages[0]['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') }}"
    "{%- endif %}{%- set messages = messages[1:] %}"
    "{%- else %}{{- '" + EMU3_SYSTEM_MESSAGE + "' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{- ' USER: ' }}{%- else %}{{- ' ASSISTANT: ' }}{%- endif %}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for item in message['content'] %}"
    "{%- if item['type'] == 'image' %}{{- '<image>' }}"
    "{%- elif item['type'] == 'text' %}{{- item['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{%- if message['role'] == 'user' %}{{- '.' }}{%- else %}{{- '<|extra_204|>' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- ' ASSISTANT:' }}{%- endif %}"
)
