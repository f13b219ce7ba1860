"""The DeepSeek-R1-Distill-Qwen chat template and its special-token texts.

``R1_DISTILL_CHAT_TEMPLATE`` is the Jinja ``chat_template`` string shipped in the
``tokenizer_config.json`` of deepseek-ai/DeepSeek-R1-Distill-Qwen-{1.5B,7B,14B,32B} on Hugging
Face (the revision whose generation prompt is ``'<｜Assistant｜><think>\\n'``), JSON-decoded, i.e.
exactly what a GGUF converted from that checkpoint carries in ``tokenizer.chat_template``.
Cross-checked against copies of that file in public repositories (e.g. LiteLLM's
``known_tokenizer_config``); llama.cpp's ``models/templates/deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja``
is a re-indented and slightly edited variant of it.

Note the full-width characters: ``｜`` is U+FF5C and ``▁`` is U+2581. Inside the template the
``'\\n'`` escapes are Jinja string-literal escapes (backslash + ``n`` in the template source),
which Jinja turns into real newlines when rendering.
"""

from __future__ import annotations

BOS_TEXT: str = "<｜begin▁of▁sentence｜>"
EOS_TEXT: str = "<｜end▁of▁sentence｜>"
USER_TEXT: str = "<｜User｜>"
ASSISTANT_TEXT: str = "<｜Assistant｜>"
THINK_OPEN: str = "<think>"
THINK_CLOSE: str = "</think>"

R1_DISTILL_CHAT_TEMPLATE: str = (
    r"{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}"
    r"{% endif %}"
    r"{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}"
    r"{%- for message in messages %}{%- if message['role'] == 'system' %}"
    r"{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}{{bos_token}}"
    r"{{ns.system_prompt}}{%- for message in messages %}{%- if message['role'] == 'user' %}"
    r"{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
    r"{%- if message['role'] == 'assistant' and message['content'] is none %}"
    r"{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls']%}"
    r"{%- if not ns.is_first %}"
    r"{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}"
    r"{%- set ns.is_first = true -%}{%- else %}"
    r"{{'\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}"
    r"{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif %}"
    r"{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    r"{%- if ns.is_tool %}"
    r"{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}"
    r"{%- set ns.is_tool = false -%}{%- else %}{% set content = message['content'] %}"
    r"{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}"
    r"{% endif %}{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    r"{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}"
    r"{%- if ns.is_output_first %}"
    r"{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    r"{%- set ns.is_output_first = false %}{%- else %}"
    r"{{'\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}"
    r"{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    r"{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\n'}}{% endif %}"
)
