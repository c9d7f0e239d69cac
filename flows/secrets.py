"""Secrets for the stages, resolved here at the edge and passed down as values (never stored)."""

from __future__ import annotations

import logging
import os

from machinery.config import JudgeConfig, TeacherConfig

logger = logging.getLogger(__name__)


class SecretError(LookupError):
    """A configured secret cannot be found; the message names it and how to create it."""


def api_key(config: TeacherConfig | JudgeConfig, *, section: str) -> str | None:
    """An endpoint's API key: from the named Prefect Secret block if any, else the named env variable.

    `section` is the config key that configured it (`teacher`, `filter.judge`), for messages.
    """
    if config.api_key_block:
        from prefect.blocks.system import Secret

        try:
            return Secret.load(config.api_key_block).get()
        except ValueError as error:  # Prefect's "Unable to find block document named ..."
            raise SecretError(f"{section}.api_key_block={config.api_key_block!r}: {error}; create it with "
                              f"prefect.blocks.system.Secret(value=...).save({config.api_key_block!r})") from None
    key = os.environ.get(config.api_key_env)
    if key is None:
        logger.info("%s: no API key in $%s; sending none (fine for local servers)", section, config.api_key_env)
    return key


def teacher_api_key(config: TeacherConfig) -> str | None:
    """The teacher's API key, or None for the embedded (tunix) teacher, which needs none."""
    return api_key(config, section="teacher") if config.backend == "openai" else None


def judge_api_key(config: JudgeConfig | None) -> str | None:
    """The filter judge's API key, or None without a judge."""
    return api_key(config, section="filter.judge") if config is not None else None
