"""The per-layer density and width plot of a run: compute (``layer_curves``) -> render (``render``).

``layer_curves`` turns a run's ``RunSummary`` into plain lists (tested); ``render`` draws them with
matplotlib's Agg backend into a PNG (two panels: activation density and width per layer over
the epochs, prune epochs marked).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adprune_core.records import RunSummary


@dataclass
class LayerCurves:
    epochs: list[int]
    density: dict[str, list[float]] = field(default_factory=dict)  # layer -> value per epoch (nan if absent)
    width: dict[str, list[float]] = field(default_factory=dict)
    prune_epochs: list[int] = field(default_factory=list)


def layer_curves(summary: RunSummary) -> LayerCurves:
    """Per-layer density and width over the epochs of a run's summary (``summary.json``)."""
    records = summary.epochs
    layers = list(dict.fromkeys(k for r in records for k in (*r.densities, *r.widths)))
    nan = float("nan")
    return LayerCurves(
        epochs=[r.epoch for r in records],
        density={k: [float(r.densities.get(k, nan)) for r in records] for k in layers},
        width={k: [float(r.widths.get(k, nan)) for r in records] for k in layers},
        prune_epochs=[e.epoch for e in summary.prune_events],
    )


def render(curves: LayerCurves, path: str | Path, title: str = "") -> Path:
    """Draw ``curves`` into a PNG at ``path``; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    fig, (ax_d, ax_w) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for ax, values, label in ((ax_d, curves.density, "activation density"), (ax_w, curves.width, "width (channels)")):
        for layer, ys in values.items():
            ax.plot(curves.epochs, ys, marker="o", markersize=3, linewidth=1, label=layer)
        for e in curves.prune_epochs:
            ax.axvline(e, color="grey", linestyle=":", linewidth=1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_w.set_yscale("log", base=2)
    ax_w.yaxis.set_major_formatter(ScalarFormatter())
    if len(curves.density) <= 24:
        ax_w.legend(fontsize=6, ncol=2, loc="best")
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
