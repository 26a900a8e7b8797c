"""The report's pictures, drawn from its data objects: interactive plotly views (embedded as HTML
fragments) and small static matplotlib PNGs (base64, for ``<img src="data:...">``).

Only the first plotly fragment of a page carries plotly.js (inline, about 4.6 MB: the report opens
offline); later fragments rely on it, so fragments must be placed in the page in the order made.
Clicking a point with a run opens that run in the MLflow UI (a small ``plotly_click`` handler).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence

from reports.health import Importances
from reports.pareto import LayerProfile, View, ViewPoint

AXIS_TITLES = {"val_top1": "val_top1 (validation top-1 accuracy)", "flops": "inference FLOPs per image",
               "params": "parameters", "train_flops_cum": "training compute (FLOPs, whole run)"}
CONTROL_STYLE = {"scratch": ("diamond", "#e67e22"), "uniform": ("triangle-up", "#27ae60"),
                 "random": ("cross", "#8e44ad"), "repeat": ("circle-open", "#2c6fbb")}
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}
OPEN_RUN_JS = """var gd = document.getElementById('{plot_id}');
gd.on('plotly_click', function (ev) {
  var url = ev.points.length && ev.points[0].customdata ? ev.points[0].customdata[1] : null;
  if (url) { window.open(url, '_blank'); }
});"""


class PlotlyPage:
    """Hands out plotly fragments for one page; the first one embeds plotly.js."""

    def __init__(self) -> None:
        self.count = 0

    def fragment(self, fig: object, div_id: str, clickable: bool = False) -> str:
        import plotly.io as pio

        html = pio.to_html(fig, full_html=False, include_plotlyjs=self.count == 0, div_id=div_id,
                           config=PLOTLY_CONFIG, post_script=OPEN_RUN_JS if clickable else None,
                           default_height="420px")
        self.count += 1
        return html


def axis_range(values: Sequence[float], accuracy: bool = False) -> list[float] | None:
    """An explicit [low, high] for an axis over ``values``, padded so that equal or nearly equal values do
    not collapse the axis (plotly then prints one tick label many times, or stretches an accuracy axis
    below 0): at least 2% of the value (0.02 for an accuracy) on each side; accuracies stay in [0, 1].
    None when there is no finite value."""
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return None
    lo, hi = min(vals), max(vals)
    pad = max(0.08 * (hi - lo), 0.02 if accuracy else 0.02 * max(abs(lo), abs(hi)), 1e-12)
    low, high = lo - pad, hi + pad
    if accuracy:
        low, high = max(0.0, low), min(1.0, high)
    elif lo >= 0:
        low = max(0.0, low)  # costs are never negative
    return [low, high]


def _label(p: ViewPoint) -> str:
    if p.control:
        return f"{p.control} control of trial {p.number}"
    tags = [t for t, on in (("baseline", p.baseline), ("Pareto-optimal", p.pareto), ("never pruned", p.never_pruned),
                            ("infeasible", not p.feasible and not p.never_pruned)) if on]
    return f"trial {p.number}" + (f" ({', '.join(tags)})" if tags else "")


def _groups(view: View) -> list[tuple[str, list[ViewPoint], dict]]:
    """(legend name, points, marker style) per kind of point, drawn in this order (later on top)."""
    pts = view.points
    groups = [
        ("other trials", [p for p in pts if not p.control and not p.pareto and p.feasible and not p.baseline],
         {"symbol": "circle", "color": "#b0b0b0", "size": 8}),
        ("never pruned", [p for p in pts if not p.control and p.never_pruned and not p.baseline],
         {"symbol": "circle-open", "color": "#888", "size": 10}),
        ("infeasible", [p for p in pts if not p.control and not p.feasible and not p.never_pruned and not p.baseline],
         {"symbol": "x", "color": "#c0392b", "size": 8}),
        ("Pareto-optimal", [p for p in pts if not p.control and p.pareto and not p.baseline],
         {"symbol": "circle", "color": "#2c6fbb", "size": 11, "line": {"width": 1, "color": "#123"}}),
        ("baseline (dense)", [p for p in pts if not p.control and p.baseline],
         {"symbol": "star", "color": "#111", "size": 16}),
    ]
    for kind in dict.fromkeys(p.control for p in pts if p.control):
        symbol, color = CONTROL_STYLE.get(kind, ("square", "#8e44ad"))
        groups.append((f"{kind} control", [p for p in pts if p.control == kind],
                       {"symbol": symbol, "color": color, "size": 11}))
    return [g for g in groups if g[1]]


def _texts(view: View) -> dict[int, str]:
    """The number written beside each labelled marker (the baseline's and the Pareto trials', by ``id`` of
    the point); such trials at the same spot share one label ("2,4"), so that numbers do not print over each
    other. Unlabelled trials at the same spot (never pruned, say) are named in the hover text instead."""
    at: dict[tuple[float, float], list[ViewPoint]] = {}
    for p in view.points:
        if not p.control and (p.baseline or p.pareto):
            at.setdefault((p.x, p.y), []).append(p)
    shown = {}
    for group in at.values():  # on the marker drawn with text: the baseline's, else a Pareto trial's
        first = min(group, key=lambda p: (not p.baseline, not p.pareto, p.number))
        shown[id(first)] = ",".join(str(p.number) for p in group)
    return shown


def _same(view: View, p: ViewPoint) -> str:
    others = [q.number for q in view.points if q is not p and not q.control and (q.x, q.y) == (p.x, p.y)]
    return f"<br>same values as trial {', '.join(map(str, others))}" if others and not p.control else ""


def view_figure(view: View) -> object:
    """A scatter of ``view``: one trace per kind of point, controls joined to their trial by a dashed line."""
    import plotly.graph_objects as go

    fig = go.Figure()
    trial_at = {p.number: p for p in view.points if not p.control}
    xs, ys = [], []
    for c in (p for p in view.points if p.control and p.number in trial_at):
        t = trial_at[c.number]
        xs += [t.x, c.x, None]
        ys += [t.y, c.y, None]
    if xs:
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"dash": "dot", "color": "#999", "width": 1},
                                 hoverinfo="skip", showlegend=False))
    text = _texts(view)
    for name, pts, marker in _groups(view):
        fig.add_trace(go.Scatter(
            x=[p.x for p in pts], y=[p.y for p in pts], name=name, marker=marker,
            mode="markers+text" if name in ("Pareto-optimal", "baseline (dense)") else "markers",
            text=[text.get(id(p), "") for p in pts], textposition="top center", textfont={"size": 10},
            customdata=[[p.number, p.url or "", _label(p) + _same(view, p)] for p in pts],
            hovertemplate=(f"%{{customdata[2]}}<br>{view.x}: %{{x:.4g}}<br>{view.y}: %{{y:.4g}}"
                           "<br>%{customdata[1]}<extra></extra>")))
    fig.update_layout(title=f"{view.y} vs {view.x}", margin={"l": 60, "r": 20, "t": 50, "b": 50},
                      legend={"orientation": "h", "y": -0.2}, template="plotly_white")
    for axis, name, update in (("x", view.x, fig.update_xaxes), ("y", view.y, fig.update_yaxes)):
        values = [getattr(p, axis) for p in view.points]
        update(title=AXIS_TITLES.get(name, name), tickformat=".1%" if name == "val_top1" else "~s",
               range=axis_range(values, accuracy=name == "val_top1"))
    return fig


def hypervolume_figure(history: Sequence[tuple[int, float]]) -> object:
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=[n for n, _ in history], y=[v for _, v in history], mode="lines+markers",
                               line={"shape": "hv"}, hovertemplate="after trial %{x}: %{y:.4f}<extra></extra>"))
    fig.update_layout(title="hypervolume of the front after each trial", template="plotly_white",
                      margin={"l": 60, "r": 20, "t": 50, "b": 50})
    fig.update_xaxes(title="trial number", dtick=1 if len(history) <= 20 else None)
    fig.update_yaxes(title="hypervolume (fraction of the reference box)", rangemode="tozero")
    return fig


def importance_figure(imp: Importances) -> object:
    import plotly.graph_objects as go

    fig = go.Figure()
    for objective, values in imp.by_objective.items():
        keys = list(values)
        fig.add_trace(go.Bar(y=keys, x=[values[k] for k in keys], name=objective, orientation="h",
                             hovertemplate=f"{objective}<br>%{{y}}: %{{x:.3f}}<extra></extra>"))
    fig.update_layout(title="parameter importance per objective (fANOVA)", barmode="group", template="plotly_white",
                      margin={"l": 160, "r": 20, "t": 50, "b": 50})
    fig.update_xaxes(title="importance (sums to 1 per objective)")
    fig.update_yaxes(autorange="reversed")
    return fig


def profile_png(profile: LayerProfile) -> str:
    """Two small panels as a base64 PNG: width per layer dense vs final, and density per layer over epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    n = len(profile.layers)
    fig, (ax_w, ax_d) = plt.subplots(1, 2, figsize=(11, 3.4), constrained_layout=True,
                                     gridspec_kw={"width_ratios": [max(1.0, n / 10), 1.2]})
    idx = list(range(n))
    ax_w.bar([i - 0.2 for i in idx], profile.width_dense, width=0.4, color="#c8c8c8", label="dense (epoch 1)")
    ax_w.bar([i + 0.2 for i in idx], profile.width_final, width=0.4, color="#2c6fbb", label="final")
    ax_w.set_xticks(idx, profile.layers, rotation=60, ha="right", fontsize=7)
    ax_w.set_ylabel("width (channels)")
    ax_w.legend(fontsize=7)
    ax_w.grid(axis="y", alpha=0.3)
    for layer, ys in profile.density.items():
        if any(not math.isnan(y) for y in ys):
            ax_d.plot(profile.epochs, ys, marker="o", markersize=2.5, linewidth=1, label=layer)
    for e in profile.prune_epochs:
        ax_d.axvline(e, color="grey", linestyle=":", linewidth=1)
    ax_d.set_xlabel("epoch (dotted: prunes after it)")
    ax_d.set_ylabel("activation density")
    ax_d.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_d.grid(alpha=0.3)
    if n <= 12:
        ax_d.legend(fontsize=6, ncol=2)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")
