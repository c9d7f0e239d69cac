"""Card text from data is shown as written and never live: no link, image, HTML, emphasis, heading or table from a row.

Cards are judged the way readers see them: rendered by markdown-it (CommonMark with GFM tables
and strikethrough), and checked for the links GFM makes from bare URLs, which markdown-it
without linkify does not.
"""

from __future__ import annotations

import base64
import html.parser
import re

import pytest
from markdown_it import MarkdownIt

from curation import build, dedup, filters, generate, pull
from data_cards import cards, markdown
from data_cards.render import inline_markdown
from machinery.config import (
    BuildConfig,
    DedupConfig,
    FilterConfig,
    PullConfig,
    TeacherConfig,
)
from tests.conftest import write_jsonl
from tests.support.fake_openai import FakeOpenAI
from tests.support.markdown import outside_code

EVIL = "evil.example"
HOSTILE = [
    f"![tracker](https://{EVIL}/pixel.png) and [click here](https://{EVIL}/login \"title\")",
    f"<img src=x onerror=alert(1)> <a href=\"https://{EVIL}\">a</a> <script>alert(1)</script> &lt;b&gt;",
    f"Visit https://{EVIL}/free or www.{EVIL} or write to admin@{EVIL}, or <https://{EVIL}/auto>",
    f"_https://{EVIL}/u_ and *www.{EVIL}* and (https://{EVIL}/p).",
    "**bold** and __strong__ and *em* and _em_ and ~~gone~~ and `code` and $x^2$ and \\*kept\\*",
    "| a | b |\n|---|---|\n| c | d |",
    "# heading\n## another\nsetext\n===\n- item\n+ item\n1. first\n2) second\n> quoted\n---",
    f"[ref]: https://{EVIL}/ref\nsee [ref] and [^1]\n[^1]: https://{EVIL}/note",
]
# The tags our own template makes; anything else in a rendered card came from data.
TEMPLATE_TAGS = {"p", "h1", "h2", "table", "thead", "tbody", "tr", "th", "td", "code", "pre", "strong", "blockquote",
                 "img", "br"}


class _Rendered(html.parser.HTMLParser):
    """Tags, link targets and image sources of an HTML page, and its text."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.text: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [value for name, value in attrs if name in ("href", "src")]

    def handle_data(self, data):
        self.text.append(data)


def _render(text: str) -> _Rendered:
    return _Rendered(MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render(text))


def _bare_links(text: str) -> list[str]:
    """What GFM's autolink extension would link: URLs, www. addresses and e-mail addresses outside code."""
    return re.findall(r"(?:https?://|www\.)\S+|[\w.+-]+@[\w-]+\.\w+", outside_code(text))


@pytest.mark.parametrize("text", HOSTILE)
def test_escaped_prose_shows_the_text_as_written_and_nothing_live(text):
    page = _render(markdown.escape(text))
    assert set(page.tags) <= {"p", "code"}, page.tags  # no link, image, HTML, emphasis, heading, list, table
    assert not page.urls and not _bare_links(markdown.escape(text))
    assert "".join(page.text).split() == text.split()  # every character shown as written, none eaten


@pytest.mark.parametrize("text", HOSTILE)
def test_a_table_cell_holds_the_text_on_one_line_and_nothing_live(text):
    table = f"| problem | n |\n|---|---|\n| {markdown.cell(text)} | 1 |\n"
    page = _render(table)
    assert page.tags.count("td") == 2 and page.tags.count("tr") == 2  # the pipes in the text made no cell or row
    assert set(page.tags) <= {"table", "thead", "tbody", "tr", "th", "td", "code"} and not page.urls
    assert not _bare_links(table)
    cell_text = "".join(page.text).split()[2:-1]  # after the header ("problem", "n"), before "1"
    assert cell_text == text.split()


def _teacher(prompt: str) -> str:
    """Right answers: the problems are 'Tom has N apples and buys N + 3 more'."""
    n = int(re.findall(r"has (\d+) apples", prompt)[-1])
    return f"<reasoning>\n{n} + {n + 3} = {2 * n + 3}\n</reasoning>\n<answer>\n{2 * n + 3}\n</answer>"


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """A run whose problems are hostile texts; two of them are in a benchmark, so they reach the card's tables."""
    root = tmp_path_factory.mktemp("hostile")
    rows = [{"question": f"{text}\nTom has {i} apples and buys {i + 3} more. How many apples now?",
             "answer": f"#### {2 * i + 3}"} for i, text in enumerate(HOSTILE * 2)]
    data = write_jsonl(root / "train.jsonl", rows)
    bench = write_jsonl(root / "bench" / "test.jsonl", rows[:2])
    run = root / "runs" / "hostile" / "v1"
    pull.run(run, PullConfig(seed=1, sources=[{"kind": "hub", "id": "openai/gsm8k", "data_files": str(data)}]))
    dedup.run(run, DedupConfig(eval_sets=[{"id": "openai/gsm8k", "split": "test", "data_files": str(bench)}]))
    with FakeOpenAI(supports_n=False, answer=_teacher) as server:
        generate.run(run, TeacherConfig(backend="openai", base_url=server.base_url, model="fake-teacher", n=2))
    filters.run(run, FilterConfig(min_tokens=1))
    build.run(run, BuildConfig(val_fraction=0.25, drop_zero_advantage=False), student="gemma3-270m", seed=1)
    cards.run(run, seed=1)
    return run


@pytest.mark.parametrize("which", ["sft", "grpo"])
def test_a_card_of_hostile_problems_has_no_live_link_image_or_html_from_them(hostile_run, which):
    card_dir = hostile_run / "cards" / which
    text = (card_dir / "README.md").read_text()
    assert "tracker" in text and "Removed as contaminated by openai/gsm8k" in text  # the hostile rows are shown
    body = text.split("\n---\n", 1)[1]  # the Hub reads the front matter as YAML, not markdown
    for shown, images in ((body, {"plots/"}), (inline_markdown(card_dir), {"data:image/png;base64,"})):
        page = _render(shown)
        assert set(page.tags) <= TEMPLATE_TAGS, set(page.tags) - TEMPLATE_TAGS
        assert page.urls and all(any(url.startswith(prefix) for prefix in images) for url in page.urls), page.urls
        assert not [line for line in _bare_links(shown) if EVIL in line]
        assert "bold" not in re.findall(r"<strong>(.*?)</strong>", MarkdownIt("commonmark").render(shown))


def test_plots_are_inlined_only_from_the_cards_own_plots_folder(tmp_path, caplog):
    card_dir = tmp_path / "cards" / "sft"
    (card_dir / "plots").mkdir(parents=True)
    ours, secret = b"\x89PNG ours", b"\x89PNG someone else's"
    (card_dir / "plots" / "tokens.png").write_bytes(ours)
    (tmp_path / "secret.png").write_bytes(secret)
    (card_dir / "plots" / "link.png").symlink_to(tmp_path / "secret.png")
    (card_dir / "README.md").write_text("---\nlicense: mit\n---\n![ours](plots/tokens.png)\n"
                                        "![up](plots/../../../secret.png)\n![linked](plots/link.png)\n")
    with caplog.at_level("WARNING"):
        shown = inline_markdown(card_dir)
    assert f"![ours](data:image/png;base64,{base64.b64encode(ours).decode()})" in shown
    assert base64.b64encode(secret).decode() not in shown
    assert shown.count("not shown: outside the card's plots folder") == 2
    assert "plots/../../../secret.png" in caplog.text and "plots/link.png" in caplog.text
