"""Diagnostic plots: training curves, the label-hierarchy dendrogram and the PRM heat map.

Figures are built with ``matplotlib.figure.Figure`` and rendered by ``FigureCanvasAgg`` directly, so
nothing touches pyplot's global state or the process-wide backend. Each PNG is written atomically
(temporary file in the target folder, then ``os.replace``) and its path is returned.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dga.fsutil import atomic_write

_MAX_TICK_LABELS = 60  # at most this many class-name tick labels on an axis
_DPI = 100


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save_atomic(fig, out_png: str | os.PathLike[str]) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return atomic_write(out_png, buf.getvalue())


def _tick_step(n: int, max_labels: int = _MAX_TICK_LABELS) -> int:
    return max(1, math.ceil(n / max_labels))


def _label_fontsize(n_shown: int) -> float:
    return float(np.clip(240.0 / max(n_shown, 1), 5.0, 9.0))


def _series(metrics: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) for rows where ``key`` holds a finite number; epoch defaults to the row index."""
    xs, ys = [], []
    for i, row in enumerate(metrics):
        v = row.get(key)
        if v is None:
            continue
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        if not math.isfinite(v):
            continue
        e = row.get("epoch")
        xs.append(float(e) if e is not None else float(i))
        ys.append(v)
    return xs, ys


def plot_training_curves(metrics: list[dict], out_png: str | os.PathLike[str]) -> Path:
    """Loss, accuracies (train, val) and learning rate over epochs, from metric rows.

    Rows have keys ``epoch``, ``train_loss``, ``train_acc``, ``val_acc``, ``lr``; any may be missing
    or None (such points are skipped). Three panels: loss, accuracies, learning rate.
    """
    fig = _new_figure(12.0, 3.8)
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)

    xs, ys = _series(metrics, "train_loss")
    if xs:
        ax_loss.plot(xs, ys, marker="o", markersize=3, label="train loss")
        ax_loss.legend(loc="best", fontsize=8)
    ax_loss.set_title("loss")
    ax_loss.set_xlabel("epoch")

    any_acc = False
    for key, label in (("train_acc", "train acc"), ("val_acc", "val acc")):
        xs, ys = _series(metrics, key)
        if xs:
            ax_acc.plot(xs, ys, marker="o", markersize=3, label=label)
            any_acc = True
    if any_acc:
        ax_acc.legend(loc="best", fontsize=8)
    ax_acc.set_title("accuracy")
    ax_acc.set_xlabel("epoch")

    xs, ys = _series(metrics, "lr")
    if xs:
        ax_lr.plot(xs, ys, color="tab:green", marker="o", markersize=3)
        if all(y > 0 for y in ys) and max(ys) / min(ys) > 100:
            ax_lr.set_yscale("log")
    ax_lr.set_title("learning rate")
    ax_lr.set_xlabel("epoch")

    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(True, alpha=0.3)
        if not ax.has_data():
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    fig.tight_layout()
    return _save_atomic(fig, out_png)


def plot_dendrogram(
    linkage: list[list[float]],
    classnames: list[str],
    level_parents: list[list[int]],
    out_png: str | os.PathLike[str],
) -> Path:
    """Dendrogram of a scipy linkage matrix with class names as leaf labels.

    Below it, one colour strip per hierarchy level shows each leaf's group id (ids written into the
    cells when there are few classes); leaf labels are coloured by the coarsest level's group. With
    many classes only every k-th leaf is labelled, so 400 classes still give a readable figure.
    """
    from matplotlib import colormaps
    from scipy.cluster.hierarchy import dendrogram

    z = np.asarray(linkage, dtype=np.float64)
    c = len(classnames)
    if z.ndim != 2 or z.shape != (c - 1, 4):
        raise ValueError(f"linkage must be a ({c - 1}, 4) matrix for {c} classes, got shape {z.shape}")
    levels = [list(p) for p in level_parents]
    for p in levels:
        if len(p) != c:
            raise ValueError(f"each level must give a parent for all {c} classes, got {len(p)}")
    sizes = [max(p) + 1 if p else 0 for p in levels]
    n_levels = len(levels)

    width = float(np.clip(0.22 * c + 3.0, 8.0, 40.0))
    strip_h = 0.35 * n_levels
    fig = _new_figure(width, 6.0 + strip_h)
    if n_levels:
        ax, ax_strip = fig.subplots(2, 1, gridspec_kw={"height_ratios": [6.0, max(strip_h, 0.4)]}, sharex=True)
    else:
        ax, ax_strip = fig.subplots(1, 1), None

    d = dendrogram(z, ax=ax, no_labels=True, color_threshold=0, above_threshold_color="0.35")
    leaves = [int(i) for i in d["leaves"]]
    xmax = 10.0 * c
    ax.set_xlim(0.0, xmax)
    ax.set_ylabel("merge distance")
    title = f"label hierarchy: {c} classes"
    if sizes:
        title += " -> levels " + " / ".join(str(s) for s in sizes)
    ax.set_title(title)

    cmap = colormaps["tab10"]
    step = _tick_step(c)
    shown = list(range(0, c, step))
    ticks = [5.0 + 10.0 * i for i in shown]
    labels = [classnames[leaves[i]] for i in shown]
    label_ax = ax_strip if ax_strip is not None else ax
    label_ax.set_xticks(ticks)
    label_ax.set_xticklabels(labels, rotation=90, fontsize=_label_fontsize(len(shown)))
    if levels:
        top = levels[-1]
        for i, tl in zip(shown, label_ax.get_xticklabels(), strict=True):
            tl.set_color(cmap(top[leaves[i]] % 10))

    if ax_strip is not None:
        ids = np.array([[p[leaf] for leaf in leaves] for p in levels], dtype=np.int64)
        ax_strip.imshow(
            ids % 10,
            cmap=cmap,
            vmin=0,
            vmax=9,
            aspect="auto",
            interpolation="nearest",
            extent=(0.0, xmax, n_levels, 0.0),
        )
        ax_strip.set_yticks([li + 0.5 for li in range(n_levels)])
        ax_strip.set_yticklabels([f"L{li + 1} ({s})" for li, s in enumerate(sizes)], fontsize=8)
        if c <= 60:
            for li in range(n_levels):
                for j in range(c):
                    ax_strip.text(5.0 + 10.0 * j, li + 0.5, str(ids[li, j]), ha="center", va="center", fontsize=6)
        ax_strip.set_xlim(0.0, xmax)
        ax.tick_params(axis="x", bottom=False, labelbottom=False)
    fig.tight_layout()
    return _save_atomic(fig, out_png)


def plot_prm(
    prm: np.ndarray,
    classnames: list[str],
    out_png: str | os.PathLike[str],
    group_size: int | None = None,
) -> Path:
    """Heat map of the compact PRM [C, M'] (rows: classes; columns: description index in the class block).

    With ``group_size`` (m descriptions per cause), dashed vertical lines separate the cause blocks.
    """
    a = np.asarray(prm, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"prm must be 2-D [C, M'], got shape {a.shape}")
    c, m = a.shape
    if len(classnames) != c:
        raise ValueError(f"prm has {c} rows but {len(classnames)} class names were given")

    width = float(np.clip(0.18 * m + 4.0, 6.0, 24.0))
    height = float(np.clip(0.16 * c + 2.0, 4.0, 40.0))
    fig = _new_figure(width, height)
    ax = fig.subplots(1, 1)
    im = ax.imshow(a, aspect="auto", interpolation="nearest", cmap="viridis")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="weight")

    step = _tick_step(c)
    rows = list(range(0, c, step))
    ax.set_yticks(rows)
    ax.set_yticklabels([classnames[i] for i in rows], fontsize=_label_fontsize(len(rows)))
    xstep = _tick_step(m, 40)
    ax.set_xticks(list(range(0, m, xstep)))
    ax.set_xlabel("description index within the class block")
    ax.set_ylabel("class")
    title = f"PRM ({c} classes x {m} descriptions)"
    if group_size is not None and group_size > 0:
        n_blocks = math.ceil(m / group_size)
        for b in range(1, n_blocks):
            ax.axvline(b * group_size - 0.5, color="white", linewidth=1.2, linestyle="--")
        title += f", {n_blocks} cause block(s) of {group_size}"
    ax.set_title(title)
    fig.tight_layout()
    return _save_atomic(fig, out_png)
