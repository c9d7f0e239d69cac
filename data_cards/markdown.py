"""Untrusted text (problems, teacher traces, evidence) placed safely into markdown.

Card text is read on the Hub, in Prefect's UI and in editors; all of them treat `<tag>` as
HTML (the Hub drops unknown tags, Prefect sanitizes them away), turn `[text](url)`,
`![alt](url)` and bare URLs into live links and images, and a stray ``` ends a fence. So
every piece of row text goes through one of these: an indented code block, a code span, a
table cell, or escaped prose (and our own YAML through a fence longer than any backtick run
inside it).
"""

from __future__ import annotations

import re

_BACKTICKS = re.compile(r"`+")
# What GFM (the Hub, GitHub) and Prefect's renderer turn into a link without brackets: a URL with
# a scheme, a `www.` address, an e-mail address. Escaping cannot stop all of them (the autolink
# extension reads the text after escapes), so escaped prose shows them as code spans.
_AUTOLINK = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*:/+|www\.)[^\s|<>`\"'()\[\]]*[^\s|<>`\"'()\[\].,:;!?*_~]"
                       r"|[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# Anywhere in a line: HTML (as entities), emphasis, strikethrough, code, links, images,
# footnotes, table pipes, math, and the backslash itself. A backslash before ASCII punctuation
# shows the character as written (CommonMark 2.4).
_INLINE = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;",
                         **{c: "\\" + c for c in "\\`*_[]!|~$"}})
# Only at the start of a line: headings, list items, setext underlines, numbered lists.
_LINE_START = re.compile(r"^([ \t]*)([#+=-]|\d+(?=[.)]))", re.MULTILINE)


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


def _escape_plain(text: str) -> str:
    """Text with no URL in it, shown as written: markdown and HTML characters escaped."""
    text = text.translate(_INLINE)
    # A digit run is escaped at its dot or parenthesis ("1\\." is no list item); anything else by itself.
    return _LINE_START.sub(lambda m: m[1] + (m[2] + "\\" if m[2][0].isdigit() else "\\" + m[2]), text)


def escape(text: str) -> str:
    """Prose-safe text: shown as written, with no live HTML, link, image, emphasis, heading or table from it.

    Markdown characters are backslash-escaped (`<`, `>`, `&` as HTML entities) and URLs and
    e-mail addresses become code spans, which no renderer links.
    """
    text, parts, last = str(text), [], 0
    for match in _AUTOLINK.finditer(text):
        parts += [_escape_plain(text[last:match.start()]), code(match[0])]
        last = match.end()
    return "".join([*parts, _escape_plain(text[last:])])


def cell(text: str) -> str:
    """Text for one markdown table cell: escaped (its pipes too), on one line."""
    return escape(" ".join(str(text).split()))
