"""Chapter 12's figures and tables: few-step samples side by side, quality against NFE."""
from __future__ import annotations

import math
from collections.abc import Callable

import matplotlib.pyplot as plt
import torch

from ..plotting import plot_image_grid, plot_samples, style

__all__ = ["markdown_table", "plot_digit_rows", "plot_sample_grid", "quality_table"]


def plot_sample_grid(samples: dict, reference: torch.Tensor, extent=(-5, 5, -3.5, 4.5), max_points: int = 1500):
    """2-D samples in a grid: rows are methods, columns NFE. samples: {method: {nfe: [N, 2] or None}};
    each panel is drawn over the reference set (grey). Returns the Figure."""
    methods = list(samples)
    nfes = sorted({k for row in samples.values() for k in row})
    with style():
        fig, axes = plt.subplots(len(methods), len(nfes), figsize=(2.1 * len(nfes), 2.0 * len(methods)),
                                 squeeze=False)
        for i, method in enumerate(methods):
            for j, nfe in enumerate(nfes):
                ax, x = axes[i][j], samples[method].get(nfe)
                if x is None:
                    ax.set_axis_off()
                    continue
                plot_samples(x, ax=ax, reference=reference[:max_points], extent=extent, max_points=max_points,
                             size=1.0)
                ax.get_legend().remove()
                ax.set(xticks=[], yticks=[])
                if i == 0:
                    ax.set_title(f"NFE {nfe}")
                if j == 0:
                    ax.set_ylabel(method)
    return fig


def plot_digit_rows(images: dict, per_row: int = 12):
    """One row of generated digits per method: images {label: [N, 1, H, W] in [-1, 1]}. Returns the Figure."""
    with style():
        fig, axes = plt.subplots(len(images), 1, figsize=(0.55 * per_row + 1.5, 0.75 * len(images) + 0.3),
                                 squeeze=False)
        for ax, (label, x) in zip(axes[:, 0], images.items()):
            plot_image_grid(x[:per_row].clamp(-1, 1), nrow=per_row, ax=ax)
            ax.set_axis_on()
            ax.set(xticks=[], yticks=[])
            for side in ax.spines.values():
                side.set_visible(False)
            ax.set_ylabel(label, rotation=0, ha="right", va="center")
    return fig


def quality_table(generators: dict, z: torch.Tensor, nfes, score: Callable) -> dict:
    """{method: {nfe: score(gen(z, nfe))}} for every generator (a score is None where a method cannot run
    with that budget, e.g. Heun with one evaluation); samples are kept in the second dict returned."""
    table, samples = {}, {}
    for name, gen in generators.items():
        table[name], samples[name] = {}, {}
        for nfe in nfes:
            try:
                x = gen(z, nfe)
            except ValueError:  # e.g. a progressive student that does not exist for this budget
                x = None
            samples[name][nfe] = x
            table[name][nfe] = None if x is None else float(score(x))
    return table, samples


def markdown_table(table: dict, nfes, digits: int = 3, extra: dict | None = None, extra_name: str = "") -> str:
    """A markdown table of {row: {nfe: value}}; the best value of each column in bold; optional extra column."""
    best = {k: min((row[k] for row in table.values() if row.get(k) is not None and math.isfinite(row[k])),
                   default=None) for k in nfes}
    head = "| method | " + " | ".join(f"NFE {k}" for k in nfes) + (f" | {extra_name} |" if extra else " |")
    lines = [head, "|---" * (len(nfes) + 1 + bool(extra)) + "|"]
    for name, row in table.items():
        cells = []
        for k in nfes:
            v = row.get(k)
            text = "–" if v is None else f"{v:.{digits}g}"
            cells.append(f"**{text}**" if v is not None and v == best[k] else text)
        tail = f" | {extra.get(name, '')} |" if extra else " |"
        lines.append(f"| {name} | " + " | ".join(cells) + tail)
    return "\n".join(lines)
