"""The report's figures: matplotlib (Agg) rendered to inline SVG strings.

Each function takes plain data (lists, dicts, numpy arrays) and returns an SVG document as text.
Text stays text in the SVG (`svg.fonttype: none`, the browser's sans-serif font), which keeps
the page small and searchable; each figure gets its own `svg.hashsalt` so the ids of clip paths
never collide between figures inlined into one page.
"""

from __future__ import annotations

import io
import math
import textwrap
from typing import Any

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
GOOD, BAD, WARN, MUTED = "#2ca02c", "#d62728", "#ff7f0e", "#7f7f7f"
STATE_COLOURS = {"OK": GOOD, "WARNING": WARN, "CRITICAL": BAD, "UNKNOWN": MUTED}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.fonttype": "none",
            "font.family": "sans-serif",
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.25,
            "figure.dpi": 96,
        }
    )
    return plt


def to_svg(fig, salt: str, tight: bool = True) -> str:
    """The figure as an inline <svg> element (no XML prolog); closes the figure.

    `tight` trims the margins, at the price of drawing the figure twice.
    """
    plt = _plt()
    plt.rcParams["svg.hashsalt"] = salt
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight" if tight else None)
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _point(ax, y: float, e: dict, **style) -> bool:
    """One estimate at row `y`: its value with its CI as whiskers. Bounds that sit on the
    wrong side of the value by float noise (a CI [0.2, 0.2] around 0.20000000000000004) or a
    missing bound draw no whisker on that side; an estimate without a finite value draws
    nothing and returns False (the caller labels the row n/a)."""
    value = e.get("value") if isinstance(e, dict) else None
    if not _finite(value):
        return False
    low, high = e.get("ci_low"), e.get("ci_high")
    below = value - low if _finite(low) else 0.0
    above = high - value if _finite(high) else 0.0
    ax.errorbar([value], [y], xerr=[[max(0.0, below)], [max(0.0, above)]], **style)
    return True


def _time_axis(ax) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def training_curves(histories: dict[str, list[dict]], salt: str) -> str:
    """Per run: train and validation loss, and validation span IoU, by epoch."""
    plt = _plt()
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(10, 3.4))
    for i, (run_id, rows) in enumerate(histories.items()):
        colour = PALETTE[i % len(PALETTE)]
        epochs = [r["epoch"] for r in rows]
        ax_loss.plot(epochs, [r["train_loss"] for r in rows], color=colour, ls="--", lw=1.2)
        ax_loss.plot(epochs, [r["val_loss"] for r in rows], color=colour, lw=1.6, label=run_id)
        ax_iou.plot(
            epochs,
            [r["val"]["span_iou"] for r in rows],
            color=colour,
            lw=1.6,
            marker="o",
            ms=3,
            label=run_id,
        )
        best = rows[-1].get("best_epoch") if rows else None
        if best:
            match = [r for r in rows if r["epoch"] == best]
            if match:
                ax_iou.plot(
                    [best], [match[0]["val"]["span_iou"]], marker="*", ms=12, color=colour, zorder=5
                )
    ax_loss.set(title="loss (dashed: train, solid: validation)", xlabel="epoch", ylabel="loss")
    ax_iou.set(title="validation span IoU (star: kept epoch)", xlabel="epoch", ylabel="span IoU")
    ax_iou.legend(fontsize=7, loc="lower right")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_iou):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return to_svg(fig, salt)


def reliability(panels: list[tuple[str, dict]], salt: str) -> str:
    """Reliability diagrams: per panel (title, {"ece", "bins": [{"p", "rate", "n"}]}) the mean
    predicted probability of each bin against the observed rate, with the diagonal."""
    plt = _plt()
    width = max(6.0, 4.6 * len(panels))  # one panel alone is still drawn at a readable size
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 4.0), squeeze=False)
    for ax, (title, rel) in zip(axes[0], panels, strict=True):
        bins = rel.get("bins") or []
        top = max([b["p"] for b in bins] + [b["rate"] for b in bins] + [0.05])
        top = min(1.0, top * 1.1)
        ax.plot([0, top], [0, top], color=MUTED, lw=1, ls="--")
        ax.plot(
            [b["p"] for b in bins],
            [b["rate"] for b in bins],
            marker="o",
            color=PALETTE[0],
            lw=1.4,
            ms=4,
        )
        heading = "\n".join(textwrap.wrap(title, 58))
        ax.set(
            xlim=(0, top),
            ylim=(0, top),
            xlabel="predicted P(expansion under way)",
            ylabel="observed share under way",
        )
        ax.set_title(f"{heading}\nECE {rel.get('ece', float('nan')):.4f}", fontsize=8)
    return to_svg(fig, salt)


def comparison(rows: list[dict], metrics: tuple[str, ...], split: str, salt: str) -> str:
    """Dot-and-whisker chart: each model and baseline with its 95% CI, one panel per metric."""
    plt = _plt()
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(4.6 * len(metrics), 0.5 + 0.42 * len(rows)), squeeze=False
    )
    names = [r["variant"] + ("  (baseline)" if r["kind"] == "baseline" else "") for r in rows]
    for ax, metric in zip(axes[0], metrics, strict=True):
        for y, row in enumerate(rows):
            m = row["metrics"][metric]
            colour = MUTED if row["kind"] == "baseline" else PALETTE[0]
            drawn = _point(ax, y, m, fmt="o", color=colour, capsize=3, ms=5)
            ax.annotate(
                f"{m['value']:.3f}" if drawn else "n/a",
                (m["value"] if drawn else 0.5, y),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=7,
            )
        ax.set_yticks(range(len(rows)), names if ax is axes[0][0] else [""] * len(rows))
        ax.set_ylim(len(rows) - 0.5, -0.8)  # top row's label clear of the title
        ax.set(title=f"{metric} on {split} (95% CI)", xlim=(-0.02, 1.02))
    return to_svg(fig, salt)


def candles(ax, ohlc, *, true_span=None, pred_span=None, title: str = "") -> None:
    """Candlesticks of one window with the true span (green band) and the predicted one."""
    import numpy as np

    ohlc = np.asarray(ohlc, dtype=float)
    x = np.arange(len(ohlc))
    o, h, lo, c = ohlc.T
    up = c >= o
    ax.vlines(x, lo, h, color="#555", lw=0.6)
    # bodies as thick line segments: one collection per window, not 105 rectangles (fast to
    # draw and small in SVG); a doji keeps a visible sliver
    body_lo, body_hi = np.minimum(o, c), np.maximum(o, c)
    body_hi = np.maximum(body_hi, body_lo + (h.max() - lo.min()) * 0.004)
    ax.vlines(x, body_lo, body_hi, colors=np.where(up, "#26a69a", "#ef5350"), lw=2.4)
    if true_span is not None:
        ax.axvspan(
            true_span[0] - 0.5, true_span[1] + 0.5, color=GOOD, alpha=0.15, lw=0, label="true span"
        )
    if pred_span is not None:
        ax.axvspan(
            pred_span[0] - 0.5,
            pred_span[1] + 0.5,
            fill=False,
            hatch="///",
            edgecolor=WARN,
            lw=1.0,
            label="predicted span",
        )
    ax.set_xlim(-1, len(ohlc))
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=7)


def span_grid(windows: list[dict[str, Any]], salt: str, cols: int = 3) -> str:
    """A grid of candlestick windows; each dict has ohlc, title, true_span?, pred_span."""
    plt = _plt()
    rows = max(1, math.ceil(len(windows) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 2.5 * rows), squeeze=False)
    for ax, w in zip(axes.flat, windows, strict=False):
        candles(
            ax,
            w["ohlc"],
            true_span=w.get("true_span"),
            pred_span=w.get("pred_span"),
            title=w.get("title", ""),
        )
    for ax in list(axes.flat)[len(windows) :]:
        ax.set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(
            handles,
            labels,
            loc="upper center",
            ncol=2,
            fontsize=8,
            bbox_to_anchor=(0.5, 1.0),
            frameon=False,
        )
    # fixed margins: the grid is regular, so no layout pass (each costs a full draw)
    top = 1 - 0.55 / (2.5 * rows)
    fig.subplots_adjust(
        left=0.05,
        right=0.99,
        bottom=0.35 / (2.5 * rows),
        top=top,
        wspace=0.22,
        hspace=0.75 / rows + 0.2,
    )
    return to_svg(fig, salt, tight=False)


def timeline(events_by_host: dict[str, list[dict]], salt: str) -> str:
    """Per host: deploys (triangles), rollbacks (squares), A/B (diamonds); red when failed."""

    plt = _plt()
    hosts = sorted(events_by_host)
    fig, ax = plt.subplots(figsize=(10, 0.8 + 0.55 * max(1, len(hosts))))
    marker = {"deploy": "^", "rollback": "s", "ab": "D", "drill": "v", "restore": "P"}
    seen = set()
    for y, host in enumerate(hosts):
        for e in events_by_host[host]:
            colour = BAD if e["status"] == "failed" else GOOD if e["kind"] != "ab" else PALETTE[3]
            label = f"{e['kind']} {'failed' if e['status'] == 'failed' else 'ok'}"
            ax.scatter(
                [e["time"]],
                [y],
                marker=marker.get(e["kind"], "o"),
                s=70,
                color=colour,
                label=None if label in seen else label,
                zorder=3,
            )
            seen.add(label)
            ax.annotate(
                e.get("text", ""),
                (e["time"], y),
                textcoords="offset points",
                xytext=(0, 9),
                ha="center",
                fontsize=7,
                rotation=20,
            )
    ax.set_yticks(range(len(hosts)), hosts)
    ax.set_ylim(-0.6, len(hosts) - 0.2)
    _time_axis(ax)
    ax.set_title("deployments, rollbacks and A/B decisions per host (UTC)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return to_svg(fig, salt)


def health_history(points_by_host: dict[str, list[dict]], salt: str) -> str:
    """Health checks over time: p99 latency (line, deep checks) and each check's state (dots)."""

    plt = _plt()
    fig, (ax_p99, ax_state) = plt.subplots(
        2, 1, figsize=(10, 4.2), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]}
    )
    hosts = sorted(points_by_host)
    for i, host in enumerate(hosts):
        points = points_by_host[host]
        with_p99 = [p for p in points if p.get("p99_ms") is not None]
        if with_p99:
            ax_p99.plot(
                [p["time"] for p in with_p99],
                [p["p99_ms"] for p in with_p99],
                marker="o",
                ms=4,
                color=PALETTE[i % len(PALETTE)],
                label=host,
            )
        for p in points:
            ax_state.scatter([p["time"]], [i], color=STATE_COLOURS.get(p["state"], MUTED), s=40)
    ax_p99.set(title="health checks: p99 latency of the deep check (ms) and state", ylabel="ms")
    if any(p.get("p99_ms") is not None for pts in points_by_host.values() for p in pts):
        ax_p99.legend(fontsize=7)
    ax_state.set_yticks(range(len(hosts)), hosts)
    ax_state.set_ylim(-0.6, len(hosts) - 0.4)
    _time_axis(ax_state)
    for name, colour in STATE_COLOURS.items():
        ax_state.scatter([], [], color=colour, label=name)
    ax_state.legend(fontsize=7, ncol=4, loc="upper left", bbox_to_anchor=(0, -0.35), frameon=False)
    return to_svg(fig, salt)


def latency_histogram(latencies: dict[str, Any], salt: str, sla_ms: float | None = None) -> str:
    """Server-side latency of captured live requests, one histogram per host."""
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 3.0))
    every = np.concatenate([np.asarray(v, dtype=float) for v in latencies.values()])
    every = every[np.isfinite(every) & (every > 0)]
    # a few slow requests (a cold start) would squash the rest: log scale when the tail is long
    log = len(every) > 0 and np.percentile(every, 99.9) > 10 * np.percentile(every, 50)
    edges = np.geomspace(every.min(), every.max(), 61) if log and len(every) else 60
    for i, (host, values) in enumerate(sorted(latencies.items())):
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        if not len(values):
            continue
        p50, p99 = np.percentile(values, [50, 99])
        ax.hist(
            values,
            bins=edges,
            alpha=0.55,
            color=PALETTE[i % len(PALETTE)],
            label=f"{host}: n={len(values)}, p50 {p50:.1f} ms, p99 {p99:.1f} ms",
        )
        ax.axvline(p99, color=PALETTE[i % len(PALETTE)], ls=":", lw=1)
    if sla_ms:
        ax.axvline(sla_ms, color=BAD, lw=1.2, label=f"SLA p99 {sla_ms:g} ms")
    if log:
        ax.set_xscale("log")
    ax.set(
        title="served latency (captured live requests)" + (", log scale" if log else ""),
        xlabel="ms",
        ylabel="windows",
    )
    ax.legend(fontsize=7)
    return to_svg(fig, salt)


def ab_figure(result: dict, salt: str) -> str:
    """A/B: differences shadow - live with CIs (left), latency of each with CIs (right)."""
    plt = _plt()
    fig, (ax_d, ax_l) = plt.subplots(1, 2, figsize=(10, 2.9))
    rows = [
        ("label agreement", result["agreement"], None),
        ("span IoU between", result["span_iou"], None),
    ]
    if result.get("outcomes"):
        for metric in ("accuracy", "span_iou"):
            rows.append((f"{metric} shadow - live", result["outcomes"][metric]["diff"], 0.0))
    for y, (_name, e, zero) in enumerate(rows):
        colour = PALETTE[0]
        if zero is not None:
            low, high = e.get("ci_low"), e.get("ci_high")
            colour = (
                GOOD if _finite(low) and low > 0 else BAD if _finite(high) and high < 0 else MUTED
            )
        if not _point(ax_d, y, e, fmt="o", color=colour, capsize=3):
            ax_d.annotate("n/a", (0, y), ha="center", va="center", fontsize=7, color=MUTED)
            continue
        ax_d.annotate(
            f"{e['value']:+.3f}" if zero is not None else f"{e['value']:.3f}",
            (e["value"], y),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=7,
        )
    ax_d.axvline(0, color="#999", lw=0.8)
    ax_d.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax_d.invert_yaxis()
    pairs = result.get("n_pairs")
    ax_d.set_title(
        f"{result['shadow_release']} vs {result['live_release']}, {pairs:,} pairs (95% CI)"
        if isinstance(pairs, int)
        else f"{result['shadow_release']} vs {result['live_release']} (95% CI)"
    )
    labels, y = [], 0
    latency = result.get("latency_ms") or {}
    for q in ("p50", "p99"):
        for i, role in enumerate(("live", "shadow")):
            e = (latency.get(role) or {}).get(q) or {}
            if not _point(ax_l, y, e, fmt="o", color=PALETTE[i], capsize=3):
                labels.append(f"{role} {q}: n/a")
            else:
                labels.append(f"{role} {q}")
            y += 1
    ax_l.set_yticks(range(len(labels)), labels)
    ax_l.invert_yaxis()
    ax_l.set(title="server latency, ms (95% CI)", xlabel="ms")
    fig.tight_layout()
    return to_svg(fig, salt)


def drift_figure(result: dict, salt: str) -> str:
    """Monitor: PSI per feature with thresholds (left), requests and p99 over time (right)."""

    plt = _plt()
    fig, (ax_psi, ax_t) = plt.subplots(1, 2, figsize=(10, 3.3))
    psi = result.get("psi") or {}
    names = list(psi)
    values = [v if v == v else 0.0 for v in psi.values()]  # NaN -> 0 in the chart
    colours = [BAD if v >= 0.25 else WARN if v >= 0.1 else GOOD for v in values]
    ax_psi.barh(range(len(names)), values, color=colours)
    ax_psi.set_yticks(range(len(names)), names)
    ax_psi.invert_yaxis()
    for x, colour in ((0.1, WARN), (0.25, BAD)):
        ax_psi.axvline(x, color=colour, ls="--", lw=1)
    ax_psi.set(
        title=f"input drift: PSI per feature ({result.get('psi_windows', 0)} windows)",
        xlim=(0, max([0.3, *values]) * 1.1),
    )
    series = result.get("series") or {}
    if series.get("t"):
        from datetime import UTC, datetime

        t = [datetime.fromtimestamp(x, UTC) for x in series["t"]]
        per_min = [n / (b / 60.0) for n, b in zip(series["requests"], series["bin_s"], strict=True)]
        ax_t.plot(t, per_min, color=PALETTE[0], marker="o", ms=3, label="requests/min")
        ax_t.set_ylabel("requests/min")
        ax_t.set_ylim(bottom=0)
        ax2 = ax_t.twinx()
        p99 = [v if v is not None else float("nan") for v in series["p99_ms"]]
        ax2.plot(t, p99, color=WARN, marker="o", ms=3, label="p99 ms")
        ax2.set_ylim(bottom=0)
        if len(t) == 1:  # one bin: a readable span around it, not a default date range
            from datetime import timedelta

            half = timedelta(seconds=max(1.0, series["bin_s"][0]))
            ax_t.set_xlim(t[0] - half, t[0] + half)
        ax2.set_ylabel("p99 ms")
        _time_axis(ax_t)
        lines = ax_t.get_lines() + ax2.get_lines()
        ax_t.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="upper left")
    ax_t.set_title(f"traffic and p99 over time ({result.get('host', '')})")
    fig.tight_layout()
    return to_svg(fig, salt)
