"""Secrets for the stages, resolved here at the edge and passed down as values (never stored).

A run config (YAML, `--set`, Prefect flow parameters) names where a key comes from
(`api_key_env`, `api_key_block`) and where it goes (`base_url`), so whoever writes a config
could otherwise have a worker send any of its variables (`HF_TOKEN`, a cloud key) to any
host. The worker's operator decides instead, in the worker's environment, outside every
run config:

- `DISTILLERY_KEY_ENVS`: the variables a config may name as `api_key_env` (comma-separated;
  default `OPENAI_API_KEY`). Any other name is refused, set or not.
- `DISTILLERY_KEY_HOSTS`: the hosts a key (from a variable or a Secret block) may be sent to
  (comma-separated; `*.example.com` allows its subdomains; default: loopback and the API
  hosts of OpenAI and Gemini). A key bound for any other host is refused, not sent.
"""

from __future__ import annotations

import logging
import os
from urllib.parse import urlparse

import httpx

from machinery import redact
from machinery.config import JudgeConfig, TeacherConfig

logger = logging.getLogger(__name__)

KEY_ENVS = "DISTILLERY_KEY_ENVS"
KEY_HOSTS = "DISTILLERY_KEY_HOSTS"
DEFAULT_KEY_ENVS = ("OPENAI_API_KEY",)
# Loopback (a server on the worker itself) and the two public APIs the profiles name.
DEFAULT_KEY_HOSTS = ("127.0.0.1", "localhost", "::1", "api.openai.com", "generativelanguage.googleapis.com")


class SecretError(LookupError):
    """A configured secret cannot be found or may not be sent; the message names the setting to change."""


def _listed(variable: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """The comma-separated names in $variable, or `default` when it is unset or empty."""
    names = tuple(part.strip() for part in os.environ.get(variable, "").split(",") if part.strip())
    return names or default


def allowed_key_envs() -> tuple[str, ...]:
    """The variables a config may name as `api_key_env` on this worker."""
    return _listed(KEY_ENVS, DEFAULT_KEY_ENVS)


def allowed_key_hosts() -> tuple[str, ...]:
    """The hosts this worker may send a key to (lowercase; `*.domain` for its subdomains)."""
    return tuple(host.lower() for host in _listed(KEY_HOSTS, DEFAULT_KEY_HOSTS))


def host_of(url: str) -> str:
    """The host a client connects to for `url`, as the OpenAI SDK's httpx parses it (lowercase)."""
    host = httpx.URL(url).host.lower()
    if host != (urlparse(url).hostname or "").lower():  # two parsers disagreeing is how such checks are fooled
        raise SecretError(f"{redact.url(url)!r}: its host is ambiguous ({host!r} to the HTTP client, "
                          f"{urlparse(url).hostname!r} to urllib); write a plain scheme://host:port/path URL")
    return host


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether `host` is listed, exactly or under a `*.domain` entry."""
    return any(host == entry or (entry.startswith("*.") and host.endswith(entry[1:])) for entry in allowed)


def _check_hosts(urls: list[str], section: str, source: str) -> None:
    """SecretError naming the URL and $DISTILLERY_KEY_HOSTS when a key from `source` would leave the allowed hosts."""
    allowed = allowed_key_hosts()
    for url in urls:
        if not host_allowed(host_of(url), allowed):
            raise SecretError(f"{section}.base_url {redact.url(url)!r}: the key from {source} may go only to the "
                              f"hosts in ${KEY_HOSTS} on this worker ({', '.join(allowed)}); add the host there, "
                              f"or set {section}.api_key_env=null if this endpoint needs no key")


def _urls(config: TeacherConfig | JudgeConfig) -> list[str]:
    return config.base_urls() if isinstance(config, TeacherConfig) else [config.base_url]


def api_key(config: TeacherConfig | JudgeConfig, *, section: str) -> str | None:
    """An endpoint's API key: from the named Prefect Secret block if any, else the named env variable.

    Only a variable in $DISTILLERY_KEY_ENVS is read, and a key goes only to hosts in
    $DISTILLERY_KEY_HOSTS; anything else is a SecretError naming the setting. `section` is
    the config key that configured it (`teacher`, `filter.judge`), for messages.
    """
    if config.api_key_block:
        # The host rule first: a block is never even read for an endpoint it may not go to.
        _check_hosts(_urls(config), section, f"the Prefect Secret block {config.api_key_block!r}")
        from prefect.blocks.system import Secret

        try:
            return Secret.load(config.api_key_block).get()
        except ValueError as error:  # Prefect's "Unable to find block document named ..."
            raise SecretError(f"{section}.api_key_block={config.api_key_block!r}: {error}; create it with "
                              f"prefect.blocks.system.Secret(value=...).save({config.api_key_block!r})") from None
    if config.api_key_env is None:
        return None
    allowed = allowed_key_envs()
    if config.api_key_env not in allowed:
        raise SecretError(f"{section}.api_key_env={config.api_key_env!r} is not a key variable this worker "
                          f"allows: ${KEY_ENVS} lists {', '.join(allowed)}; its operator adds a name there, "
                          f"or set {section}.api_key_env=null for an endpoint that needs no key")
    key = os.environ.get(config.api_key_env)
    if not key:
        logger.info("%s: no API key in $%s; sending none (fine for local servers)", section, config.api_key_env)
        return None
    _check_hosts(_urls(config), section, f"${config.api_key_env}")
    return key


def teacher_api_key(config: TeacherConfig) -> str | None:
    """The teacher's API key, or None for the embedded (tunix) teacher, which needs none."""
    return api_key(config, section="teacher") if config.backend == "openai" else None


def judge_api_key(config: JudgeConfig | None) -> str | None:
    """The filter judge's API key, or None without a judge."""
    return api_key(config, section="filter.judge") if config is not None else None
