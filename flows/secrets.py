"""Secrets for the stages, resolved here at the edge and passed down as values (never stored)."""

from __future__ import annotations

import logging
import os

from curation.config import TeacherConfig

logger = logging.getLogger(__name__)


class SecretError(LookupError):
    """A configured secret cannot be found; the message names it and how to create it."""


def teacher_api_key(config: TeacherConfig) -> str | None:
    """The teacher's API key: from the named Prefect Secret block if any, else the named env variable."""
    if config.api_key_block:
        from prefect.blocks.system import Secret

        try:
            return Secret.load(config.api_key_block).get()
        except ValueError as error:  # Prefect's "Unable to find block document named ..."
            raise SecretError(f"teacher.api_key_block={config.api_key_block!r}: {error}; create it with "
                              f"prefect.blocks.system.Secret(value=...).save({config.api_key_block!r})") from None
    key = os.environ.get(config.api_key_env)
    if key is None and config.backend == "openai":
        logger.info("no API key in $%s; sending none (fine for local servers)", config.api_key_env)
    return key
