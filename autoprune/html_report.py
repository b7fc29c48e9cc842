"""report.html: a run directory on one self-contained page, and a check of it in a real browser.

The page is built from the run directory's files alone, so it can be rebuilt at any time, also
while a search runs or after one was killed: what is not written yet is said on the page instead
of failing. Plots are PNG data URIs and the CSS is inline, so the one file opens anywhere, offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from autoprune.budget import parse_budget
from autoprune.candidate import complete_scores
from autoprune.config import SearchConfig
from autoprune.errors import UserError
from autoprune.export import ExportCheck
from autoprune.pruning.space import Cost
from autoprune.report import (
    COSTS,
    as_number,
    describe_latency,
    describe_speedup,
    draw_front,
    latency_note,
    pareto_subnets,
    predictor_lines,
    space_tables,
)
from autoprune.results import RunDir, SubnetSpec, atomic_write
from autoprune.runs import read_subnets
from autoprune.search.sensitivity import GroupSensitivity, plot_sensitivity, read_sensitivity

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]



@dataclass
class _Run:
    dir: RunDir
    config: dict
    status: dict
    trials: pd.DataFrame  # empty (with the known columns) before the first trial
    baseline: dict | None  # from pareto.json, written when the search ends
    subnets: list[SubnetSpec]  # every fine-tuned subnet
    sensitivity: list[GroupSensitivity] | None

    @staticmethod
    def read(path: Path) -> _Run:
        run = RunDir.existing(path)
        config = {**asdict(SearchConfig()), **run.read_config()}  # older runs lack newer options
        return _Run(run, config, run.read_status(), run.read_trials(), run.read_baseline(), read_subnets(path),
                    read_sensitivity(path))

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def latency(self) -> dict | None:
        """The run's latency set-up (latency.json: target, widths, predictor check); None for older runs."""
        path = self.path / "latency.json"
        return json.loads(path.read_text()) if path.is_file() else None

    @property
    def base(self) -> Cost | None:
        b = self.baseline
        return Cost(b["macs"], b["params"], b.get("latency_ms")) if b else None

    def limits(self) -> dict[str, tuple[float, str]]:
        """The budget's ceiling on each cost it bounds, with its text. A relative one needs the
        baseline; an absolute one never reads it (hence the zero cost in its place)."""
        base = self.base
        constraints = parse_budget(self.config["budget"]).constraints
        return {c.metric: (c.limit(base or Cost(0, 0)), c.text)
                for c in constraints if c.fraction is None or base}


def write_html_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` (atomically: a browser or a copy never sees half a page)."""
    run = _Run.read(Path(run_dir))
    path = run.path / "report.html"
    # all ASCII (HTML character references for the rest), whatever the locale's encoding
    atomic_write(path, _page(run).encode("ascii", "xmlcharrefreplace").decode())
    return path


# --- the page -------------------------------------------------------------------------------------

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; color: #222; margin: 0;
       background: #f6f7f9; }
main { max-width: 1180px; margin: 0 auto; padding: 16px 24px 40px; background: #fff; }
h1 { font-size: 24px; margin: 8px 0 4px; } h2 { font-size: 19px; margin: 28px 0 8px;
     border-bottom: 1px solid #ddd; padding-bottom: 4px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 8px 0; }
dt { color: #666; } dd { margin: 0; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e4e4e4; text-align: right; }
th { background: #f0f2f5; } td:first-child, th:first-child, td:last-child, th:last-child {
  text-align: left; }
tr.baseline td { font-weight: 600; background: #fafafa; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 12px; }
img.plot { max-width: 100%; height: auto; display: block; }
.notes { background: #fff8e1; border: 1px solid #f0d070; padding: 8px 14px; border-radius: 4px; }
.status { padding: 1px 8px; border-radius: 10px; color: #fff; background: #888; }
.status.complete { background: #2e7d32; } .status.running { background: #e08a00; }
code, pre { font: 13px ui-monospace, Menlo, Consolas, monospace; background: #f3f3f3; }
pre { padding: 8px 12px; overflow-x: auto; } .muted { color: #666; }
"""


def _page(run: _Run) -> str:
    c = run.config
    title = f"autoprune: {c['model']} on {c['data']}, budget {c['budget']}"
    sections = [f"<h1>{_e(title)}</h1>", _header(run), _notes(run), _table(run),
                _pareto_plots(run), _widths(run), _space(run), _progress(run), _sensitivity(run), _deploy(run)]
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body><main>\n"
            + "\n".join(s for s in sections if s) + "\n</main></body></html>\n")


def _header(run: _Run) -> str:
    c, b, status = run.config, run.baseline, run.status.get("status", "unknown")
    budget = parse_budget(c["budget"]).describe(run.base) if run.base else c["budget"]
    states = run.trials["state"].value_counts()
    pruning = ("single weights by magnitude" if c["granularity"] == "weight"
               else f"channels, criterion {c['criterion']}")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    timings = run.status.get("timings", {})
    facts = {
        "model / data": f"{c['model']} on {c['data']}",
        "budget": budget,
        "baseline": (f"{b['macs'] / 1e6:.2f}M MACs, {b['params'] / 1e6:.3f}M params, "
                     f"{_f(b.get('latency_ms'), '.2f')} ms, test accuracy {b['test_acc']:.2%}") if b
        else "not written yet (pareto.json)",
        "search": f"strategy {c['strategy']}, pruning {pruning}",
        "trials": f"{len(run.trials)} of {c['trials']}" + (f" ({counts})" if counts else ""),
        "fine-tuning": f"top {c['finetune_top']} for {c['finetune_epochs']:g} epochs"
        if c["finetune_top"] else "none (--finetune-top 0)",
        "latency": f"measured at batch {c['latency_batch']} on {c['device']}",
        "time spent": ", ".join(f"{k} {_duration(v)}" for k, v in timings.items())
        or "not recorded yet",
    }
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts.items())
    when = ", ".join(f"{k} {run.status[k].replace('T', ' ')}" for k in ("started", "finished")
                     if k in run.status)
    return (f'<p><span class="status {_e(status)}">{_e(status)}</span> '
            f'<span class="muted">{_e(when)}</span></p><dl>{rows}</dl>')


def _notes(run: _Run) -> str:
    """What the run has not written (yet), so that a partial page reads as partial."""
    notes, status = [], run.status.get("status")
    if status != "complete":
        notes.append(f"The run is {status or 'not marked complete'}: this page shows what it has "
                     "written so far. Build it again when the search ends.")
    if not len(run.trials):
        notes.append("No trial has finished yet (trials.csv is missing or empty).")
    if run.baseline is None:
        notes.append("No pareto.json yet: the baseline, relative budget lines and the Pareto "
                     "front are complete when the search ends.")
    if not run.subnets and run.config["finetune_top"] == 0:
        notes.append("No subnet was fine-tuned: --finetune-top 0.")
    elif not run.subnets:
        notes.append("No candidate was scored in full within the budget: no subnet was fine-tuned. Try more "
                     "--trials, --pruner none or a looser budget." if status == "complete"
                     else "No fine-tuned subnet yet.")
    items = "".join(f"<li>{_e(n)}</li>" for n in notes)
    return f'<div class="notes"><ul>{items}</ul></div>' if notes else ""


def _table(run: _Run) -> str:
    b, front = run.baseline, {s.id for s in pareto_subnets(run.subnets, "macs")}
    head = ("subnet", "MACs (M)", "MACs %", "params (M)", "latency (ms)", "speedup", "proxy acc", "test acc",
            "delta vs baseline", "Pareto", "trained after pruning")

    def row(name: str, r: Mapping, latency: str, speedup: str, *extra: str) -> list[str]:
        share = 100 * r["macs"] / b["macs"] if b else None
        delta = 100 * (r["test_acc"] - b["test_acc"]) if b else None
        return [name, f"{r['macs'] / 1e6:.2f}", _f(share, ".1f"), f"{r['params'] / 1e6:.3f}", latency, speedup,
                _f(r.get("proxy_acc"), ".2%"), _f(r["test_acc"], ".2%"),
                _f(delta, "+.2f") + (" pp" if delta is not None else ""), *extra]

    rows = [(' class="baseline"', row("baseline", b, _f(b.get("latency_ms"), ".3f"), "")[:8] + ["", "", ""])] if b else []
    rows += [("", row(s.id, s.front_record(), describe_latency(s), describe_speedup(s), "yes" if s.id in front else "no",
                      s.retrain_text))
             for s in sorted(run.subnets, key=lambda s: -s.test_acc)]
    if not rows:
        return ""
    body = "".join(f"<tr{cls}>" + "".join(f"<td>{_e(v)}</td>" for v in cells) + "</tr>"
                   for cls, cells in rows)
    return ("<h2>Baseline vs fine-tuned subnets</h2>"
            f'<table id="subnets"><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr>{body}</table>'
            '<p class="muted">proxy acc: adaptive-BN score on held-out training images, before '
            f"fine-tuning; test acc: after fine-tuning, on the test split. {_e(latency_note(run.config, run.latency))}"
            + "".join(f" {_e(line)}" for line in predictor_lines([], run.latency)) + "</p>")


def _pareto_plots(run: _Run) -> str:
    limits, images, notes = run.limits(), [], []
    scored = complete_scores(run.trials)
    for cost, name in (("macs", "MACs"), ("latency_ms", "latency")):
        column = COSTS[cost][2]
        known = scored[scored[column].notna()] if column in scored else scored.iloc[:0]
        if not len(known) and not pareto_subnets(run.subnets, cost):
            notes.append(f"No accuracy-vs-{name} plot yet: nothing scored has a {name}.")
            continue
        if len(known) < len(scored):
            notes.append(f"The {name} plot leaves out the {len(scored) - len(known)} of "
                         f"{len(scored)} scored candidates without a {name}.")
        fig, ax = _figure(6.2, 4.3)
        front = draw_front(ax, cost, known, run.subnets, run.baseline, limits.get(cost))
        ax.set_title(f"accuracy vs {name}")
        if cost == "latency_ms":
            ax.set_xlabel(f"latency (ms, batch {run.config['latency_batch']}): subnets measured on "
                          f"{run.config.get('target', 'torch')}, candidates predicted")
        alt = (f"Accuracy vs {name}: {len(known)} scored candidates, {len(run.subnets)} fine-tuned "
               f"subnets, Pareto front of {len(front)}"
               + (f", budget {limits[cost][1]}" if cost in limits else ""))
        images.append(_img(fig, f"pareto-{name.lower()}", alt))
    return (f'<h2>Pareto front</h2><div class="plots">{"".join(images)}</div>'
            + "".join(f'<p class="muted">{_e(n)}</p>' for n in notes))


def _widths(run: _Run) -> str:
    head = "<h2>Channel widths of the Pareto subnets</h2>"
    if run.config["granularity"] == "weight":
        return (head + "<p>This run prunes single weights (granularity weight): every layer keeps "
                "its width, so there is no width chart. The table gives each subnet's sparse MACs "
                "and params.</p>")
    front = pareto_subnets(run.subnets, "macs")
    if not front:
        return head + "<p>No fine-tuned subnet, so no widths to draw.</p>"
    groups = list(front[0].channels)
    fig, ax = _figure(7.6, 0.9 + len(groups) * (0.1 * (len(front) + 1) + 0.12))
    height = 0.8 / (len(front) + 1)
    bars = [("baseline", [front[0].channels[g] for g in groups], "lightgray")]
    bars += [(s.id, [len(s.kept[g]) for g in groups], None) for s in front]
    for i, (name, widths, color) in enumerate(bars):
        drawn = ax.barh([k - 0.4 + height * (i + 0.5) for k in range(len(groups))], widths, height,
                        label=name, color=color)
        ax.bar_label(drawn, fontsize=6, padding=2)
    ax.set_yticks(range(len(groups)), groups, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("output channels kept (baseline: all)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1), ncol=len(bars), frameon=False)
    alt = f"Channels kept per group, baseline vs Pareto subnets {', '.join(s.id for s in front)}"
    return head + _img(fig, "widths", alt)


def _space(run: _Run) -> str:
    """The groups searched and the layers never pruned, with why (``report.space_tables``)."""
    groups, unprunable, cost_line = space_tables(run.config)
    if not groups and not unprunable:
        return ""
    html = f"<h2>What was searched</h2><p>{_e(cost_line)}</p>"
    html += _rows_table("groups", ("group", "channels", "step", "layers"), groups)
    if unprunable:
        html += "<p>Layers never pruned:</p>" + _rows_table("unprunable", ("layer", "why"), unprunable)
    return html


def _rows_table(ident: str, head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table id="{ident}"><tr>{"".join(f"<th>{_e(h)}</th>" for h in head)}</tr>{body}</table>'


def _progress(run: _Run) -> str:
    trials = run.trials
    if not len(trials):
        return ""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure(7.6, 3.6)
    scored, stopped = complete_scores(trials), trials[trials["proxy_acc"].notna() & (trials["state"] == "stopped")]
    tuned = scored[scored["number"].isin([s.trial for s in run.subnets])]
    if len(scored):
        ax.scatter(scored["number"], scored["proxy_acc"] * 100, s=16, color="tab:blue",
                   label="scored within budget (proxy)")
        ax.step(scored["number"], scored["proxy_acc"].cummax() * 100, where="post", color="tab:red",
                label="best so far")
    if len(stopped):
        ax.scatter(stopped["number"], stopped["proxy_acc"] * 100, s=16, marker="v", color="tab:gray",
                   label="stopped early (proxy of the images seen)")
    if len(tuned):
        ax.scatter(tuned["number"], tuned["proxy_acc"] * 100, s=90, facecolors="none",
                   edgecolors="black", label="fine-tuned")
    low, high = ax.get_ylim()
    ax.set_ylim(low - 0.08 * (high - low), high)  # room for the unscored trials' marks below
    for state, rows in trials[trials["proxy_acc"].isna()].groupby("state"):
        ax.plot(rows["number"], [0.03] * len(rows), "x", transform=ax.get_xaxis_transform(),
                color="tab:orange" if state == "infeasible" else "tab:purple",
                label=f"{state} (not scored)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("proxy accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    alt = f"Search progress: proxy accuracy of {len(scored)} scored of {len(trials)} trials, best so far"
    return "<h2>Search progress</h2>" + _img(fig, "progress", alt)


def _sensitivity(run: _Run) -> str:
    if run.sensitivity is None:
        return ""
    png = io.BytesIO()  # sensitivity.py's own plot, drawn from the CSV
    plot_sensitivity(png, run.sensitivity, run.config["tolerance"], run.config["damage"])
    safe = ", ".join(f"{r.group} {r.max_safe_ratio:g}" for r in run.sensitivity)
    alt = f"Damage per group by pruning ratio; largest safe ratios: {safe}"
    return ("<h2>Per-group sensitivity</h2>" + _img(png.getvalue(), "sensitivity", alt)
            + '<p class="muted">Each group pruned alone: the largest ratio whose damage stays '
            "within the tolerance is its safe ratio (sensitivity.csv).</p>")


def _deploy(run: _Run) -> str:
    front = pareto_subnets(run.subnets, "macs")
    best = max(front, key=lambda s: s.test_acc).id if front else "ID"
    where = (f"The most accurate Pareto subnet, {best}, as ONNX and in Python (any subnet id "
             "from the table works):" if front else "Once a subnet is fine-tuned, with its ID:")
    return (f"<h2>Deploy</h2><p>{_e(where)}</p>"
            f"<pre>autoprune export {_e(run.path)} --subnet {_e(best)} --format onnx</pre>"
            "<pre>import autoprune\n"
            f'model = autoprune.load_subnet("{_e(run.path / "subnets" / best)}")</pre>' + _exports(run))


def _exports(run: _Run) -> str:
    """The exports made so far (subnets/<id>/exports.json): their check and latency next to PyTorch's."""
    rows = []
    for s in run.subnets:
        for c in (ExportCheck(**fields) for fields in run.dir.read_exports(s.id).values()):
            rows.append([s.id, c.format, Path(c.path).name, c.runtime, f"{c.max_abs_diff:.1e}",
                         "yes" if c.ok else "NO", str(c.batch), f"{c.latency_ms:.3f}",
                         f"{c.pytorch_latency_ms:.3f}"])
    if not rows:
        return ""
    head = ("subnet", "format", "file", "checked in", "max |diff|", "matches", "batch",
            "exported (ms)", "PyTorch (ms)")
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in r) + "</tr>" for r in rows)
    return (f'<table id="exports"><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr>{body}</table>'
            f'<p class="muted">Exports: outputs compared with the PyTorch subnet on random inputs; '
            f"latency of both at the same batch and threads on the CPU.</p>")


# --- helpers --------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> tuple[Figure, Axes]:
    """A figure outside pyplot: no global state, no backend to choose, nothing left open."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="tight")
    return fig, fig.subplots()


def _img(image: Figure | bytes, ident: str, alt: str) -> str:
    """An <img> with the figure (or PNG bytes) inline as a data URI."""
    if not isinstance(image, bytes):
        buffer = io.BytesIO()
        image.savefig(buffer, format="png")
        image = buffer.getvalue()
    uri = "data:image/png;base64," + base64.b64encode(image).decode()
    return f'<img class="plot" id="{ident}" alt="{_e(alt)}" src="{uri}">'


def _f(value: Any, spec: str) -> str:
    number = as_number(value)
    return "–" if number is None else format(number, spec)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{seconds:.1f} s" if seconds < 60 else f"{minutes} min {secs:02d} s"


def _e(value: Any) -> str:
    return html.escape(str(value))


# --- the browser check ----------------------------------------------------------------------------


@dataclass
class BrowserCheck:
    """What a real browser saw when it opened the page."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)  # id, alt, naturalWidth/Height, complete

    def problems(self) -> list[str]:
        """One line per thing that is wrong with the page; empty when it rendered cleanly."""
        broken = [f"image {i['id'] or i['alt']!r} did not render" for i in self.images
                  if not (i["complete"] and i["naturalWidth"] > 0)]
        return ([f"console error: {m}" for m in self.console_errors]
                + [f"page error: {m}" for m in self.page_errors]
                + [f"failed request: {m}" for m in self.failed_requests] + broken)


def require_browser() -> None:
    """Raise a UserError naming the one install command if playwright or Chromium is missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise UserError("playwright is missing: pip install playwright") from None
    if not Path(CHROMIUM).is_file():
        raise UserError("Chromium is missing: sudo apt-get install -y chromium")


def check_in_browser(html: Path, screenshot: Path | None = None) -> BrowserCheck:
    """Open ``html`` in headless Chromium, collect console errors, page errors, failed requests and
    every image's decoded size, and optionally save a full-page screenshot."""
    require_browser()
    from playwright.sync_api import sync_playwright

    check = BrowserCheck()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: m.type == "error" and check.console_errors.append(m.text))
            page.on("pageerror", lambda e: check.page_errors.append(str(e)))
            page.on("requestfailed",
                    lambda r: check.failed_requests.append(f"{r.url}: {r.failure}"))
            page.goto(Path(html).resolve().as_uri(), wait_until="load")
            check.images = page.eval_on_selector_all("img", """imgs => imgs.map(i => ({id: i.id,
                alt: i.alt, naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight,
                complete: i.complete}))""")
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return check
