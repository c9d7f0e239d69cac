"""Untrusted text (problems, teacher traces, evidence) placed safely into markdown.

Card text is read on the Hub, in Prefect's UI and in editors; all of them treat `<tag>` as
HTML (the Hub drops unknown tags, Prefect sanitizes them away) and a stray ``` ends a
fence. So every piece of row text goes through one of these: an indented code block, a code
span, a table cell, or escaped prose (and our own YAML through a fence longer than any
backtick run inside it).
"""

from __future__ import annotations

import html
import re

_BACKTICKS = re.compile(r"`+")


def _longest_run(text: str) -> int:
    return max((len(m) for m in _BACKTICKS.findall(text)), default=0)


def fence(text: str, info: str = "text") -> str:
    """A fenced code block holding `text` verbatim: its fence is longer than any backtick run inside."""
    marker = "`" * max(3, _longest_run(text) + 1)
    return f"{marker}{info}\n{text}\n{marker}"


def block(text: str) -> str:
    """An indented code block holding `text` verbatim (needs a blank line before it).

    Unlike a fence, nothing inside can end it, and no line of it starts with `<` or `#`, so no
    renderer (or line-based check) takes row text for HTML or a heading.
    """
    return "\n".join(f"    {line}" if line.strip() else "" for line in str(text).splitlines()) or "    "


def code(text: str) -> str:
    """An inline code span holding `text` (on one line) verbatim, whatever backticks it contains."""
    flat = " ".join(str(text).split())
    marker = "`" * (_longest_run(flat) + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""
    return f"{marker}{pad}{flat}{pad}{marker}"


def escape(text: str) -> str:
    """Prose-safe text: `<`, `>` and `&` as HTML entities, so tags show as written."""
    return html.escape(str(text), quote=False)


def cell(text: str) -> str:
    """Text for one markdown table cell: escaped, on one line, with its pipes escaped."""
    return escape(" ".join(str(text).split())).replace("|", "\\|")
