"""Credentials out of URLs: the one redaction every written or logged URL goes through.

A URL's user info (`https://user:key@host`, `redis://:pw@host`) becomes `***@`, and the
value of a query parameter whose name looks like a credential (`key`, `api_key`, `token`,
`password`, `sig`, ...) becomes `***`. `url` redacts one URL, `text` every URL inside a
message, `value` every string of a nested config, stats or card payload.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
# Query parameter names that carry credentials (substrings, case-insensitive): key, api_key, apikey,
# access_token, password, client_secret, X-Amz-Signature, sig, auth, ...
_SECRET_PARAM = re.compile(r"key|token|secret|pass|pwd|auth|sig|credential|session", re.IGNORECASE)
# A bounded scheme keeps the scan linear over long untrusted text (a 20,000-letter word is no URL).
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s'\"<>`]+")
_SEPARATOR = re.compile(r"([?&;])")


def _split(value: str) -> tuple[str, str, str] | None:
    """(scheme, authority, rest) of a URL; None for a string without `://`.

    The authority runs to the last `@` before any `?` or `#` when there is one: a password
    holding an unescaped `/` still counts as user info (and is redacted whole).
    """
    scheme, sep, rest = value.partition("://")
    if not sep:
        return None
    end = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    start = rest.rfind("@", 0, end) + 1
    cut = min((i for i in (rest.find(c, start) for c in "/?#") if i >= 0), default=len(rest))
    return scheme, rest[:cut], rest[cut:]


def credentials(url: str) -> list[str]:
    """What in `url` is a credential: `user info`, `query parameter 'key'`, ... (empty: none)."""
    parts = _split(url)
    if parts is None:
        return []
    _, authority, rest = parts
    found = ["user info (user:password@)"] if "@" in authority else []
    return found + [f"query parameter {name!r}" for name in _secret_params(rest)]


def _secret_params(rest: str) -> list[str]:
    """Names of the credential-like query parameters in a URL's path-and-query."""
    pairs = [piece.partition("=") for piece in _SEPARATOR.split(rest)[2::2]]  # what follows each ?, & or ;
    return [name for name, equals, _ in pairs if equals and _SECRET_PARAM.search(name)]


def _mask_params(rest: str) -> str:
    """`rest` with the value of each credential-like query parameter replaced by `***` (a #fragment kept)."""
    pieces = _SEPARATOR.split(rest)
    for i in range(2, len(pieces), 2):
        name, equals, tail = pieces[i].partition("=")
        if equals and _SECRET_PARAM.search(name):
            fragment = tail.partition("#")[1:]
            pieces[i] = f"{name}={MASK}{''.join(fragment)}"
    return "".join(pieces)


def url(value: str) -> str:
    """`value` with its user info and credential-like query values replaced by `***`."""
    parts = _split(value)
    if parts is None:
        return value
    scheme, authority, rest = parts
    if "@" in authority:
        authority = f"{MASK}@{authority.rpartition('@')[2]}"
    rest = _mask_params(rest)
    return f"{scheme}://{authority}{rest}"


def text(value: str) -> str:
    """`value` with every URL in it redacted (log lines, error messages, card text)."""
    return _URL.sub(lambda m: url(m[0]), value)


def value(payload: Any) -> Any:
    """A copy of a nested payload (dicts, lists, tuples, strings) with every URL in its strings redacted.

    Mapping keys too: the generate stage's stats count requests per endpoint URL.
    """
    if isinstance(payload, str):
        return text(payload)
    if isinstance(payload, dict):
        return {value(key): value(item) for key, item in payload.items()}
    if isinstance(payload, (list, tuple)):
        return type(payload)(value(item) for item in payload)
    return payload
