"""The import graph: data flows one way, and only flows/ knows Prefect.

Every import is read from the source, including lazy ones inside functions (a lazy import
is still an import: the edge exists the moment the function runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("machinery", "curation", "models", "data_cards", "training", "flows")
# package -> the packages of ours it must never import (later stages, the orchestrator)
FORBIDDEN = {
    # the machinery every stage stands on: no stage, no trainer, no card, no orchestrator
    "machinery": {"curation", "data_cards", "training", "flows"},
    "models": {"machinery", "curation", "data_cards", "training", "flows"},
    "curation": {"data_cards", "training", "flows"},
    "data_cards": {"training", "flows"},
    "training": {"flows"},
    "flows": set(),
}
PREFECT_HOME = "flows"


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement in a file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom):  # relative: resolve against the file's own package
            base = path.relative_to(ROOT).parent.parts[: len(path.relative_to(ROOT).parent.parts) - node.level + 1]
            found.append((node.lineno, ".".join([*base, *([node.module] if node.module else [])])))
    return found


def edges() -> list[tuple[str, int, str, str]]:
    """(file, line, importing package, imported module) for every module of ours."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, module in imports(path):
                found.append((str(path.relative_to(ROOT)), line, package, module))
    return found


def test_every_package_is_scanned():
    scanned = {package for _, _, package, _ in edges()}
    assert scanned == set(PACKAGES)


def test_no_import_reaches_back_to_a_later_stage():
    wrong = [f"{file}:{line} imports {module} ({package}/ must not import {module.split('.')[0]}/)"
             for file, line, package, module in edges() if module.split(".")[0] in FORBIDDEN[package]]
    assert not wrong, "\n".join(wrong)


def test_only_flows_imports_prefect():
    wrong = [f"{file}:{line} imports {module} (Prefect belongs in {PREFECT_HOME}/)"
             for file, line, package, module in edges() if module.split(".")[0] == "prefect" and package != PREFECT_HOME]
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_lazy_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from training import models\n    import prefect.blocks\n")
    assert imports(sample) == [(2, "training"), (3, "prefect.blocks")]
