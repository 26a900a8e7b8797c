"""Write a ``Report`` (``reports.report``) to a folder: ``index.html`` (self-contained: plotly.js,
styles and images inline, no network), ``summary.md``, ``trials.csv`` (every trial) and ``pareto.csv``
(the Pareto-optimal trials, same columns). Columns are described in ``reports.pareto.trial_rows``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from adprune_core.records import Savings
from reports.figures import PlotlyPage, hypervolume_figure, importance_figure, profile_png, view_figure
from reports.health import REFERENCE_FACTOR, edge_warnings
from reports.pareto import CONTROL_LABELS, CONTROL_QUESTIONS, ControlSummary, finite
from reports.report import Report
from study.sharing import sharing_text

FILES = ("index.html", "summary.md", "trials.csv", "pareto.csv")
FEW_TRIALS_FOR_IMPORTANCE = 30  # below this many searched trials the report's importances carry a strong caution
DASH = "–"


# --- numbers as text -----------------------------------------------------------------------------------

def fmt_si(v: Any) -> str:
    """1.234e9 -> '1.23 G'; NaN/None -> a dash."""
    if not finite(v):
        return DASH
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= size:
            return f"{v / size:.3g} {unit}"
    return f"{v:.3g}"


def fmt_acc(v: Any) -> str:
    """A fraction as a percentage: 0.8125 -> '81.25%'."""
    return f"{100 * v:.2f}%" if finite(v) else DASH


def fmt_pt(v: Any) -> str:
    """A change of a fraction in percentage points, signed: -0.012 -> '-1.20 pt'."""
    return f"{100 * v:+.2f} pt" if finite(v) else DASH


def fmt_acc_sd(mean: Any, sd: Any) -> str:
    """A mean accuracy and its spread over seeds: (0.712, 0.0085) -> '71.20% ± 0.85'; no spread: '71.20%'."""
    return fmt_acc(mean) + (f" ± {100 * sd:.2f}" if finite(sd) and finite(mean) else "")


def fmt_diff(d: Any) -> str:
    """A ``reports.seeds.Difference``: '+2.10 pt ± 0.60 (higher)', '+2.10 pt (one seed)', or a dash."""
    if not finite(d.diff):
        return DASH
    se = f" ± {100 * d.se:.2f}" if finite(d.se) else ""
    return f"{fmt_pt(d.diff)}{se} ({d.word})"


def fmt_x(v: Any) -> str:
    return f"{v:.2f}x" if finite(v) else DASH


def fmt_value(name: str, v: Any) -> str:
    return fmt_acc(v) if name == "val_top1" else fmt_si(v)


def fmt_param(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def params_text(row: Mapping[str, Any]) -> str:
    return ", ".join(f"{k[len('search.'):]}={fmt_param(v)}" for k, v in row.items()
                     if k.startswith("search.") and v is not None and not (isinstance(v, float) and math.isnan(v)))


# --- tables --------------------------------------------------------------------------------------------

PARETO_HEADERS = ("trial", "val_top1", "test_top1", "accuracy change", "params", "compression params", "flops",
                  "compression flops", "train compute", "train-compute reduction", "hyperparameters")
CONTROL_HEADERS = ("network", "seeds", "val_top1", "test_top1", "flops", "train compute", "trial minus it: val_top1",
                   "trial minus it: test_top1")


def pareto_table_rows(report: Report, link: bool) -> list[tuple[str, list[str]]]:
    """(row kind, cells) for the Pareto table: the baseline first (also when not on the front), then by
    trial number the front and any picked or controlled trial off it, each followed by its controls (one row
    per kind: means and spreads over its seeds). Cells are text; with ``link`` they are HTML."""
    esc = html.escape if link else (lambda s: s)
    numbers = ([report.baseline] if report.baseline is not None and report.baseline not in report.pareto else [])
    shown = set(report.pareto) | set(report.picked) | {c.control_of for c in report.controls}
    numbers += sorted(n for n in shown - set(numbers) if report.row(n) is not None)
    out = []
    for number in numbers:
        r = report.row(number)
        tags = [t for t, on in (("baseline", r["baseline"]), ("not on the front", not r["pareto"]),
                                ("picked", r["picked"])) if on]
        name = f"{number}" + (f" ({', '.join(tags)})" if tags else "")
        cells = [_link(name, r.get("mlflow_url")) if link else name, fmt_acc(r.get("val_top1")),
                 fmt_acc(r.get("test_top1")), fmt_pt(r.get("accuracy_change")), fmt_si(r.get("params")),
                 fmt_x(r.get("compression_params")),
                 fmt_si(r.get("flops")), fmt_x(r.get("compression_flops")), fmt_si(r.get("train_flops_cum")),
                 fmt_x(r.get("train_compute_reduction")), esc(params_text(r) or "(dense baseline)")]
        out.append(("baseline" if r["baseline"] else "pareto", cells))
        for summary in report.summaries.get(number, {}).values():
            out.append(("control", _control_cells(report, summary, link)))
    return out


def _control_cells(report: Report, c: ControlSummary, link: bool) -> list[str]:
    mean = c.stats.mean
    s = Savings.of(mean, report.baseline_metrics).to_dict()
    seeds = f"{c.stats.n} seed{'s' * (c.stats.n != 1)}"
    if c.kind == "repeat":
        name, note = f"↳ trial {c.trial} over {seeds} (the trial + repeats)", "the spread of pruning in training"
    else:
        name = f"↳ {c.kind} control of {c.trial} ({seeds})"
        note = f"trial minus control: {fmt_diff(c.vs_trial['val_top1'])} (> 0: pruning in training paid)"
    latest = c.runs[-1] if c.runs else None
    return [_link(name, latest.url if latest else None) if link else name,
            fmt_acc_sd(mean.get("val_top1"), c.stats.sd.get("val_top1")),
            fmt_acc_sd(mean.get("test_top1"), c.stats.sd.get("test_top1")), fmt_pt(s.get("accuracy_change")),
            fmt_si(mean.get("params")), fmt_x(s.get("compression_params")), fmt_si(mean.get("flops")),
            fmt_x(s.get("compression_flops")), fmt_si(mean.get("train_flops_cum")),
            fmt_x(s.get("train_compute_reduction")), html.escape(note) if link else note]


def control_table_rows(summaries: Mapping[str, ControlSummary], trial: Mapping[str, Any],
                       number: int) -> list[list[str]]:
    """The controls of trial ``number`` (``reports.pareto.control_summaries``) side by side over seeds, as plain
    text cells: the trial over its seeds (or its own final metrics ``trial`` without repeats), then each control
    kind with the trial's difference from it (``reports.seeds.compare``)."""
    own = summaries.get("repeat")
    r = trial
    rows = []
    if own is not None:
        stats = own.stats
        rows.append([f"trial {number}, pruned in training", str(stats.n),
                     fmt_acc_sd(stats.mean.get("val_top1"), stats.sd.get("val_top1")),
                     fmt_acc_sd(stats.mean.get("test_top1"), stats.sd.get("test_top1")),
                     fmt_si(stats.mean.get("flops")), fmt_si(stats.mean.get("train_flops_cum")), "", ""])
    else:
        rows.append([f"trial {number}, pruned in training", "1", fmt_acc(r.get("val_top1")),
                     fmt_acc(r.get("test_top1")), fmt_si(r.get("flops")), fmt_si(r.get("train_flops_cum")), "", ""])
    for kind, c in summaries.items():
        if kind == "repeat":
            continue
        rows.append([CONTROL_LABELS.get(kind, kind), str(c.stats.n),
                     fmt_acc_sd(c.stats.mean.get("val_top1"), c.stats.sd.get("val_top1")),
                     fmt_acc_sd(c.stats.mean.get("test_top1"), c.stats.sd.get("test_top1")),
                     fmt_si(c.stats.mean.get("flops")), fmt_si(c.stats.mean.get("train_flops_cum")),
                     fmt_diff(c.vs_trial["val_top1"]), fmt_diff(c.vs_trial["test_top1"])])
    return rows


def control_answers(summaries: Mapping[str, ControlSummary]) -> list[str]:
    """One line per control kind (``reports.pareto.control_summaries``): the question it answers and what the
    seeds say."""
    out = []
    for kind, c in summaries.items():
        if kind in CONTROL_QUESTIONS:
            val, test = c.vs_trial["val_top1"], c.vs_trial["test_top1"]
            out.append(f"{kind}: {CONTROL_QUESTIONS[kind]} trial minus control, val_top1 {fmt_diff(val)}, "
                       f"test_top1 {fmt_diff(test)}")
    return out


CONTROLS_NOTE = ("Means ± sample standard deviation over seeds (train.seed; the validation split stays the same). "
                 "'higher'/'lower': the trial's mean differs from the control's by more than 2 standard errors "
                 "(sqrt(sd_a^2/n_a + sd_b^2/n_b)); 'within noise': it does not; 'one seed': a side has one run, "
                 "so no spread is known (make controls SEEDS=3).")


def _link(text: str, url: str | None) -> str:
    if not url:
        return html.escape(text)
    return f'<a href="{html.escape(url)}" target="_blank" rel="noopener">{html.escape(text)}</a>'


def html_table(headers: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]], cls: str = "") -> str:
    """``rows``: (css class, cells already escaped)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "\n".join(f'<tr class="{k}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" for k, cells in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows])


def states_rows(report: Report) -> list[list[str]]:
    rows = [[state, str(n)] for state, n in report.states.items()]
    if report.never_pruned:
        rows.insert(1, ["COMPLETE but never pruned (of the above; the baseline's network again)",
                        str(report.never_pruned)])
    if report.infeasible:
        rows.insert(1, ["COMPLETE but infeasible: accuracy below the constraint (of the above)",
                        str(report.infeasible)])
    return rows


def trial_marks(r: Mapping[str, Any]) -> list[str]:
    """What sets a trial apart, for the tables: baseline, on the front, never pruned, infeasible."""
    complete = r["state"] == "COMPLETE"
    return [m for m, on in (("baseline", r["baseline"]), ("Pareto-optimal", r["pareto"]),
                            ("never pruned", complete and r.get("never_pruned")),
                            ("infeasible", complete and not r["feasible"] and not r.get("never_pruned"))) if on]


def hypervolume_text(report: Report) -> str:
    if not report.hv_history:
        return "hypervolume: no trials"
    number, value = report.hv_history[-1]
    costs = ", ".join(n for n in report.names if n != "val_top1")
    by = "the baseline's" if report.hv_scale.source == "baseline" else "their largest value (no completed baseline)"
    return (f"hypervolume {value:.4f} after trial {number}: the fraction of the box between the ideal point "
            f"(val_top1 1, costs 0) and the reference point (val_top1 0, {costs} {REFERENCE_FACTOR} x {by}) "
            "that the front dominates (docs/report.md)")


def importance_caution(report: Report) -> str:
    """How far to trust the fANOVA importances: one line, stronger below ``FEW_TRIALS_FOR_IMPORTANCE``."""
    n = report.importances.trials
    if n < FEW_TRIALS_FOR_IMPORTANCE:
        return (f"fANOVA over only {n} COMPLETE searched trials: with so few, importances are mostly noise; read "
                f"them as a hint at best (they settle after a few dozen trials)")
    return f"fANOVA over {n} COMPLETE searched trials (importances are noisy: compare studies, not decimals)."


def importance_rows(report: Report, top: int = 5) -> list[list[str]]:
    rows = []
    for objective, values in report.importances.by_objective.items():
        best = sorted(values.items(), key=lambda kv: -kv[1])[:top]
        rows.append([objective, ", ".join(f"{k} {v:.2f}" for k, v in best)])
    return rows


# --- documents -----------------------------------------------------------------------------------------

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;
color:#222;padding:0 16px}h1{margin-bottom:4px}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f4f6f8}tr.baseline td{background:#fafafa;font-weight:600}
tr.control td{color:#555;font-style:italic}tr.never-pruned td{color:#888}tr.infeasible td{color:#a33}
.warn{background:#fff4e0;border-left:4px solid #e67e22;
padding:6px 10px;margin:6px 0}.note{color:#666;font-size:13px}.views{display:grid;grid-template-columns:1fr;
gap:8px}img{max-width:100%}details{margin:8px 0}code{background:#f4f4f4;padding:1px 4px}"""


def render_html(report: Report) -> str:
    """The whole page as one string (plotly.js inline)."""
    page = PlotlyPage()
    esc = html.escape
    parts = [f"<h1>Study report: {esc(report.study)}</h1>", f'<p class="note">{esc(_header(report))}</p>']
    for warning in report.notes:
        parts.append(f'<div class="warn">{esc(warning)}</div>')
    if report.edges:
        parts.append(f'<div class="warn">{len(edge_warnings(report.edges))} search-space edge warning(s): '
                     '<a href="#edges">Pareto-optimal trials at the end of a range</a></div>')

    parts.append("<h2>Pareto front</h2>")
    parts.append(f'<p class="note">{len(report.pareto)} Pareto-optimal trial(s) over '
                 f'{esc(", ".join(f"{n} ({d})" for n, d in zip(report.names, report.directions)))}, among the '
                 "feasible COMPLETE trials. Highlighted points are on the front of all objectives (so a point may "
                 "look dominated in one 2-D view). Click a point to open its run in the MLflow UI "
                 f"({esc(report.mlflow_url)}; start it with <code>make ui</code>).</p>")
    parts.append('<div class="views">' + "".join(
        page.fragment(view_figure(v), f"view-{i}", clickable=True) for i, v in enumerate(report.views)) + "</div>")
    parts.append("<h3>Pareto-optimal trials</h3>")
    parts.append(html_table(PARETO_HEADERS, pareto_table_rows(report, link=True), "pareto"))
    parts.append('<p class="note">accuracy change: val_top1 minus the baseline\'s, in percentage points; '
                 "compression and train-compute reduction: the baseline's value divided by the trial's. "
                 "test_top1: the dataset's evaluation split, measured once at the end of each run and never "
                 "read by the search (val_top1 minus test_top1 is the search's optimism).</p>")
    if report.summaries:
        parts.append("<h2>Controls: did the method's choices matter?</h2>")
        parts.append(f'<p class="note">{esc(CONTROLS_NOTE)}</p>')
        for number in sorted(report.summaries):
            parts.append(f"<h3>trial {number}</h3>")
            rows = control_table_rows(report.summaries[number], report.row(number) or {}, number)
            parts.append(html_table(CONTROL_HEADERS, [("", [esc(c) for c in row]) for row in rows]))
            parts.append("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in
                                          control_answers(report.summaries[number])) + "</ul>")

    parts.append("<h2>Pareto trials, layer by layer</h2>")
    for number in report.pareto:
        parts.append(_profile_section(report, number))

    parts.append("<h2>Study health</h2>")
    parts.append("<h3>Trials by state</h3>" + html_table(("state", "trials"), [("", r) for r in states_rows(report)]))
    if report.sharing is not None and report.sharing.trials:
        parts.append(f"<h3>Compute</h3><p>{esc(_compute_text(report))}</p>")
    parts.append(f"<h3>Hypervolume over trials</h3><p class='note'>{esc(hypervolume_text(report))}.</p>")
    parts.append(page.fragment(hypervolume_figure(report.hv_history), "hypervolume"))
    parts.append("<h3>Which search parameters matter</h3>")
    if report.importances.note:
        parts.append(f"<p>{esc(report.importances.note)}.</p>")
    else:
        parts.append(f'<div class="warn">{esc(importance_caution(report))}</div>')
        parts.append(page.fragment(importance_figure(report.importances), "importance"))
    parts.append('<h3 id="edges">Edges of the search space</h3>')
    parts.append("".join(f'<div class="warn">{esc(w)}</div>' for w in edge_warnings(report.edges))
                 or "<p>No Pareto-optimal trial sits on the edge of a numeric range.</p>")

    parts.append("<h2>All trials</h2><details><summary>every trial (also in trials.csv)</summary>")
    parts.append(html_table(("trial", "state", *report.names, "accuracy change", "compression flops",
                             "train-compute reduction", "hyperparameters", "stop / fail reason"),
                            [(_row_class(r), _all_trials_cells(report, r)) for r in report.rows]))
    parts.append("</details>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(report.study)}: '
            f"ADPrune study report</title><style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def _compute_text(report: Report) -> str:
    """What the study's training cost, and what shared prefixes saved (``study.sharing``)."""
    return (f"{sharing_text(report.sharing)} (train_flops_cum still counts whole runs; trials.csv: "
            "reused_epochs, train_flops_spent, forked_from)")


def _header(report: Report) -> str:
    total = sum(report.states.values())
    base = f"baseline: trial {report.baseline}" if report.baseline is not None else "no completed baseline"
    picked = f"; picked: {', '.join(map(str, report.picked))}" if report.picked else ""
    return f"{total} trial{'s' * (total != 1)}; {base}{picked}; generated {report.generated}"


def _all_trials_cells(report: Report, r: Mapping[str, Any]) -> list[str]:
    reason = r.get("stop_reason") or r.get("fail_reason") or ""
    marks = trial_marks(r)
    return [_link(str(r["number"]) + (f" ({', '.join(marks)})" if marks else ""),
                  r.get("mlflow_url")), r["state"], *(fmt_value(n, r.get(n)) for n in report.names),
            fmt_pt(r.get("accuracy_change")), fmt_x(r.get("compression_flops")),
            fmt_x(r.get("train_compute_reduction")), html.escape(params_text(r)), html.escape(str(reason))]


def _row_class(r: Mapping[str, Any]) -> str:
    marks = trial_marks(r)
    return next((c for m, c in (("baseline", "baseline"), ("never pruned", "never-pruned"),
                                ("infeasible", "infeasible")) if m in marks), "")


def _profile_section(report: Report, number: int) -> str:
    r = report.row(number)
    title = f"trial {number}" + (" (baseline)" if r["baseline"] else "")
    head = (f"<h3>{_link(title, r.get('mlflow_url'))}</h3><p class='note'>{fmt_acc(r.get('val_top1'))}, "
            f"{fmt_x(r.get('compression_flops'))} fewer FLOPs, {fmt_x(r.get('train_compute_reduction'))} less "
            f"training compute; {html.escape(params_text(r) or 'dense')}</p>")
    profile = report.profiles.get(number)
    if profile is None:
        return head + "<p>no per-epoch history found for this trial.</p>"
    rows = [("", [html.escape(layer), str(d), str(f), f"{f / d:.0%}" if d else DASH])
            for layer, d, f in zip(profile.layers, profile.width_dense, profile.width_final)]
    return (head + f'<img alt="widths and densities of trial {number}" '
            f'src="data:image/png;base64,{profile_png(profile)}">'
            f"<details><summary>widths per layer (from {html.escape(report.profile_sources.get(number, ''))})"
            f"</summary>{html_table(('layer', 'dense', 'final', 'kept'), rows)}</details>")


def render_markdown(report: Report) -> str:
    """``summary.md``: the header, the Pareto table, the study's health, the warnings."""
    lines = [f"# Study report: {report.study}", "", _header(report), "",
             "Objectives: " + ", ".join(f"`{n}` ({d})" for n, d in zip(report.names, report.directions)) + ".", ""]
    if report.edges or report.notes:
        lines += ["## Warnings", ""] + [f"- {w}" for w in edge_warnings(report.edges) + report.notes]
        lines.append("")
    lines += [f"## Pareto front ({len(report.pareto)} trials)", "",
              md_table(PARETO_HEADERS, [cells for _, cells in pareto_table_rows(report, link=False)]), "",
              *_markdown_controls(report),
              "## Study health", "", md_table(("state", "trials"), states_rows(report)), "",
              *([_compute_text(report) + ".", ""] if report.sharing is not None and report.sharing.trials else []),
              hypervolume_text(report) + ".", "", "Parameter importance (fANOVA): "
              + (report.importances.note + "." if report.importances.note else importance_caution(report)), ""]
    if not report.importances.note:
        lines += [md_table(("objective", "most important (importance)"), importance_rows(report)), ""]
    lines += ["Files: " + ", ".join(f"`{f}`" for f in FILES) + ".", ""]
    return "\n".join(lines)


def _markdown_controls(report: Report) -> list[str]:
    if not report.summaries:
        return []
    lines = ["## Controls: did the method's choices matter?", "", CONTROLS_NOTE, ""]
    for number in sorted(report.summaries):
        rows = control_table_rows(report.summaries[number], report.row(number) or {}, number)
        lines += [f"### trial {number}", "", md_table(CONTROL_HEADERS, rows), ""]
        lines += [f"- {line}" for line in control_answers(report.summaries[number])] + [""]
    return lines


def write_report(report: Report, out_dir: str | Path) -> list[Path]:
    """Write the four files into ``out_dir`` (created); returns their paths in ``FILES`` order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(report.rows)
    for col in (c for c in frame.columns if c.startswith("search.")):  # keep ints ints beside blanks
        frame[col] = pd.Series([r.get(col) for r in report.rows], dtype=object)
    paths = [out / f for f in FILES]
    paths[0].write_text(render_html(report), encoding="utf-8")
    paths[1].write_text(render_markdown(report), encoding="utf-8")
    frame.to_csv(paths[2], index=False)
    (frame[frame["pareto"]] if len(frame) else frame).to_csv(paths[3], index=False)
    return paths
