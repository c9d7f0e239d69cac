"""Render one data card per built set: README.md (Hugging Face dataset card), card.json, plots, data.

The front matter comes from `huggingface_hub.DatasetCardData`; the body is a Jinja template.
Each card folder is publishable as a Hub dataset repo: README.md plus data/{train,validation}.parquet.
"""

from __future__ import annotations

import base64
import logging
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import polars as pl
from huggingface_hub import DatasetCard, DatasetCardData

from data_cards import markdown, plots
from data_cards.facts import scrub
from machinery import formats, store

logger = logging.getLogger(__name__)

SETS = ("sft", "grpo")
DESCRIPTIONS = {
    "sft": "Supervised fine-tuning set: one row per verified teacher trace, as a prompt/completion pair in "
           "the student's chat template and as chat messages. Every completion is exactly one "
           "`<reasoning>` block and one `<answer>` block whose answer matches the gold answer.",
    "grpo": "GRPO prompt set: one row per problem with its gold answer and the teacher's pass rate "
            "(`difficulty` = 1 - pass rate). Problems the teacher always or never solved are left out: "
            "equal rewards give GRPO no advantage to learn from.",
}
MAX_HITS = 20
EXAMPLE_CHARS = 700


def size_category(n: int) -> str:
    """The Hub's size category for n rows."""
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return label
    return "n>10M"


def _examples(frame: pl.DataFrame, which: str, seed: int) -> list[dict[str, str]]:
    train = frame.filter(pl.col("split") == "train")
    sample = train.sample(n=min(5, train.height), seed=seed) if train.height else train
    examples = []
    for row in sample.iter_rows(named=True):
        text = (row["prompt"] + row["completion"] if which == "sft"
                else f"{row['prompt']}\n[gold answer: {row['gold']}; teacher pass rate {row['pass_rate']:.2f}]")
        if len(text) > EXAMPLE_CHARS:
            text = text[: EXAMPLE_CHARS // 2] + "\n[…]\n" + text[-EXAMPLE_CHARS // 2 :]
        examples.append({"problem_id": row["problem_id"], "source": row["source"], "text": text})
    return examples


def _plots(frame: pl.DataFrame, which: str, out: Path) -> list[dict[str, str]]:
    made = []
    if which == "sft":
        plots.histogram(frame["tokens"].drop_nulls().to_list(), out / "plots" / "tokens.png",
                        title="Completion length", xlabel="tokens (teacher's count)")
        made.append({"title": "Completion length in tokens", "path": "plots/tokens.png"})
    else:
        words = frame["problem"].str.split(" ").list.len().to_list()
        plots.histogram(words, out / "plots" / "problem_words.png", title="Problem length", xlabel="words")
        made.append({"title": "Problem length in words", "path": "plots/problem_words.png"})
    plots.histogram(frame["pass_rate"].drop_nulls().to_list(), out / "plots" / "difficulty.png",
                    title="Teacher pass rate per row", xlabel="pass rate (1 = always solved)", bins=10)
    made.append({"title": "Teacher pass rate", "path": "plots/difficulty.png"})
    return made


def commands(facts: dict[str, Any]) -> list[str]:
    """The commands that rebuild this version from its config."""
    run = f"runs/{facts['dataset']}/{facts['version']}"
    stages = ("pull", "dedup", "generate", "filter", "build", "cards")
    return [f"distillery {stage} --run {run} --config config.yaml" for stage in stages]


def _environment() -> jinja2.Environment:
    """Jinja with the markdown filters for untrusted text (`data_cards.markdown`); missing facts are errors."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    env.filters.update(block=markdown.block, fence=markdown.fence, code=markdown.code, cell=markdown.cell,
                       escape_md=markdown.escape)
    return env


def render_set(run_dir: Path, facts: dict[str, Any], which: str, *, seed: int) -> dict[str, Any]:
    """Write cards/<which>/ and return the card's facts (what card.json holds)."""
    built = store.finished(run_dir, "build")
    frame = built.read(formats.SFT_SET) if which == "sft" else built.read()
    out = run_dir / "cards" / which
    sizes, declared = {}, []
    for split in ("train", "validation"):
        part = frame.filter(pl.col("split") == split).drop("split")
        sizes[split] = part.height
        path = out / "data" / f"{split}.parquet"
        # `datasets.load_dataset(folder)` fails on a declared split with no rows: write and declare only
        # splits with rows (train always, so an empty set still loads, as an empty train split).
        if part.height or split == "train":
            store.write_parquet(part, path)
            declared.append(split)
        else:
            path.unlink(missing_ok=True)
    made = _plots(frame, which, out)
    licenses = sorted({s["license"] for s in facts["sources"]})
    card_data = DatasetCardData(
        license=licenses[0] if len(licenses) == 1 else licenses, language=["en"], task_categories=["text-generation"],
        size_categories=[size_category(frame.height)], pretty_name=f"{facts['dataset']} {which.upper()} ({facts['version']})",
        tags=["math", "reasoning", "distillation", which],
        configs=[{"config_name": "default", "data_files": [{"split": s, "path": f"data/{s}.parquet"}
                                                           for s in declared]}],
        source_datasets=[s["name"] for s in facts["sources"]],
    )
    hashes = {str(p.relative_to(out)): store.file_hash(p) for p in sorted(out.rglob("*")) if p.is_file()
              and p.name not in ("README.md", "card.json")}
    hashes.update({f"../../{stage}/{name}": digest for stage, outputs in facts["stage_hashes"].items()
                   for name, digest in outputs.items() if name.endswith(".parquet")})
    card = {
        "title": f"{facts['dataset']}: {which.upper()} set, version {facts['version']}",
        "set": which, "description": DESCRIPTIONS[which], "sizes": sizes, "facts": facts, "plots": made,
        "examples": _examples(frame, which, seed), "hashes": hashes, "commands": commands(facts), "seed": seed,
    }
    card = scrub(card, run_dir)
    body = _environment().from_string(resources.files("data_cards").joinpath("template.md.j2").read_text()).render(
        card_data=card_data.to_yaml(), hits=card["facts"]["dedup"]["hits"][:MAX_HITS],
        audit=card["facts"]["filter"]["audit"], rejected_examples=card["facts"]["filter"]["examples"],
        **card)
    DatasetCard(body).save(out / "README.md")
    store.write_json({**card, "card_data": card_data.to_dict()}, out / "card.json")
    return card


def inline_markdown(card_dir: Path) -> str:
    """The card for viewers that cannot open the folder (Prefect's artifact page): no front matter
    (it renders as one huge heading there), and every plot inlined as a `data:image/png;base64` URI.

    Only PNG files inside the card's own `plots/` folder are read: a path that leads out of it
    (`plots/../../x.png`, or a link to elsewhere) is not read, and the artifact says so.
    """
    text = (card_dir / "README.md").read_text()
    body = text.split("\n---\n", 1)[1].lstrip("\n") if text.startswith("---\n") else text
    plots_dir = (card_dir / "plots").resolve()

    def inline(match: re.Match) -> str:
        image = (card_dir / match.group(2)).resolve()
        if not image.is_relative_to(plots_dir):
            logger.warning("%s: not inlining %s, which lies outside the card's plots folder", card_dir, match.group(2))
            return f"(plot {markdown.code(match.group(2))} not shown: outside the card's plots folder)"
        if not image.is_file():
            return match.group(0)
        return f"![{match.group(1)}](data:image/png;base64,{base64.b64encode(image.read_bytes()).decode()})"

    return re.sub(r"!\[([^\]]*)\]\((plots/[^)\s]+\.png)\)", inline, body)
