"""Histograms for the cards, as PNG files (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first


def histogram(values: list[float], path: Path, *, title: str, xlabel: str, bins: int = 20) -> Path:
    """Save a histogram of values to path (an empty plot says so when there are none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(6, 3.2), dpi=100)
    if values:
        axes.hist(values, bins=bins, color="#4C72B0", edgecolor="white")
    else:
        axes.text(0.5, 0.5, "no rows", ha="center", va="center", transform=axes.transAxes)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("rows")
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
    return path
