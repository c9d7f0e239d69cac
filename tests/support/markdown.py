"""Reading markdown the way a renderer does, for tests of what cards show."""

from __future__ import annotations

import re


def outside_code(markdown: str) -> str:
    """Markdown without its code: fenced blocks (a fence closes on a run at least as long), indented
    blocks (our cards indent nothing else by 4 spaces) and code spans."""
    text = re.sub(r"^(`{3,})[^\n]*\n.*?^\1`*\s*$", "", markdown, flags=re.MULTILINE | re.DOTALL)
    text = re.sub(r"^(?: {4}|\t).*$", "", text, flags=re.MULTILINE)
    return re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)", "", text, flags=re.DOTALL)


def bare_tags(markdown: str) -> list[str]:
    """HTML tags a renderer would see (outside code)."""
    return re.findall(r"<[A-Za-z/][^>]*>", outside_code(markdown))
