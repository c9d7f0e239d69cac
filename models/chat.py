"""Chat templates: a student's own (Jinja, from its tokenizer_config.json), rendered as transformers does.

The environment copies transformers' `apply_chat_template` (utils/chat_template_utils.py):
a sandboxed Jinja with trim_blocks and lstrip_blocks, loop controls, a `tojson` that keeps
non-ASCII text, `raise_exception` and `strftime_now`; the special tokens (`bos_token`, ...)
are passed as strings. So a prompt is the very text transformers and vLLM would build.

Models without a template of their own (the embedded GGUF Gemma 3 270M and the tiny test
model) use `GEMMA`, the Gemma 3 turn format distillery has always used.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

# Gemma 3's turns: `<start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n`, BOS first.
GEMMA = ("{{ bos_token }}{% for message in messages %}<start_of_turn>"
         "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
         "{{ message['content'] }}<end_of_turn>\n{% endfor %}"
         "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
_MARK = "\u2063DISTILLERY-END-OF-TURN-PROBE\u2063"  # text no template adds or changes


class ChatTemplateError(LookupError):
    """A model has no chat template, or its template fails on a plain user turn."""


@dataclass(frozen=True, kw_only=True)
class ChatTemplate:
    """A Jinja chat template, the special tokens it may use, and where it came from."""

    template: str
    special: dict[str, str] = field(default_factory=dict)  # bos_token, eos_token, ... as strings
    source: str = "built-in Gemma 3 turns"

    def render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
        """The conversation as text, as transformers' `apply_chat_template(tokenize=False)` renders it."""
        return _compiled(self.template).render(messages=messages, tools=None, documents=None,
                                               add_generation_prompt=add_generation_prompt, **self.special)

    def prompt(self, user: str) -> str:
        """One user turn and the opening of the assistant's, without a leading BOS (encoders add the id)."""
        text = self.render([{"role": "user", "content": user}], add_generation_prompt=True)
        bos = self.special.get("bos_token")
        return text[len(bos):] if bos and text.startswith(bos) else text

    @functools.cached_property
    def end_of_turn(self) -> str:
        """What the template writes after an assistant's words (`<end_of_turn>`, `<|im_end|>`, `<|eot_id|>`)."""
        text = self.render([{"role": "user", "content": "u"}, {"role": "assistant", "content": _MARK}],
                           add_generation_prompt=False)
        if _MARK not in text:
            raise ChatTemplateError(f"chat template ({self.source}) drops the assistant's words")
        end = text[text.rindex(_MARK) + len(_MARK):].strip()
        return end or self.special.get("eos_token", "")

    @property
    def digest(self) -> str:
        """sha256 of the template and its special tokens: part of the build stage's key."""
        payload = json.dumps({"template": self.template, "special": self.special}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


def gemma(bos_token: str = "<bos>") -> ChatTemplate:
    """The built-in Gemma 3 turn format."""
    return ChatTemplate(template=GEMMA, special={"bos_token": bos_token, "eos_token": "<eos>"})


def from_folder(folder: Path, special: dict[str, str]) -> ChatTemplate | None:
    """A folder's own template: `chat_template.jinja`, else tokenizer_config.json's `chat_template`; None if neither."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return ChatTemplate(template=jinja.read_text(), special=special, source=str(jinja))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    template = config.get("chat_template")
    if isinstance(template, list):  # several named templates: the default one is the chat template
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if not isinstance(template, str) or not template:
        return None
    return ChatTemplate(template=template, special=special, source=f"{config_path} chat_template")


@functools.lru_cache(maxsize=16)
def _compiled(template: str):
    """transformers' Jinja environment (see the module docstring), compiled once per template."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` marks assistant text for training masks: rendered as is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)
