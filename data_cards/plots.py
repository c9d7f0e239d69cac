"""Histograms for the cards, as PNG files (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after matplotlib.use: the backend must be chosen first

from machinery import store


def histogram(values: list[float], path: Path, *, title: str, xlabel: str, bins: int = 20) -> Path:
    """Save a histogram of values to path (an empty plot says so when there are none), atomically."""
    figure, axes = plt.subplots(figsize=(6, 3.2), dpi=100)
    if values:
        axes.hist(values, bins=bins, color="#4C72B0", edgecolor="white")
    else:
        axes.text(0.5, 0.5, "no rows", ha="center", va="center", transform=axes.transAxes)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("rows")
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png")
    plt.close(figure)
    store.atomic_write_bytes(path, png.getvalue())  # a killed cards stage leaves no torn plot
    return path
