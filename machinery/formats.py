"""The student's format, shared by the stage that builds the sets and the stages that train and judge on them.

A completion is `<reasoning>...</reasoning>\n<answer>...</answer>`; the student sees the instructions and the
problem in one user turn of its own chat template. Build writes the SFT set to `SFT_SET` beside the GRPO set.
"""

from __future__ import annotations

from models import registry
from models.chat import ChatTemplate

SYSTEM = (
    "You are a careful math tutor. Solve the problem step by step inside <reasoning> and "
    "</reasoning>, then give only the final answer, with no units or words, inside <answer> and </answer>."
)
SFT_SET = "sft.parquet"  # the build stage's SFT set; its GRPO set is the stage's data.parquet


def chat_template(model: str, revision: str | None = None) -> ChatTemplate:
    """The student's chat template: its own (tokenizer_config.json), or Gemma 3's turns for the embedded model."""
    return registry.chat_template(model, revision=revision)


def student_prompt(problem: str, model: str, *, revision: str | None = None) -> str:
    """The prompt the student sees: instructions and problem in one user turn, in its chat template, no BOS.

    One user turn, no system message: Gemma has no system role.
    """
    return chat_template(model, revision).prompt(f"{SYSTEM}\n\n{problem}")
