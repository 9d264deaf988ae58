"""A/B on live traffic: the live release and its shadow, paired on the same requests.

The live server answers every request; a sample of them is copied to the candidate (the shadow)
without waiting for it. Both answers are captured with the same `request_id` and window `index`,
so each shadowed window is a pair. `analyze(table)` reports, with bootstrap 95% CIs:

- label agreement and span IoU *between* the two releases (no ground truth needed),
- latency p50/p99 of each release on the same requests,
- with ground truth (`outcomes`, a labeled set joined on `window_id`): the paired difference
  shadow - live in accuracy and in span IoU against the true span, and one decision sentence:
  promote, keep, or not enough evidence yet (with how many more requests it would take).

Bootstraps are vectorised so 100,000 pairs take about a second: the mean of a resample is drawn
from a multinomial over the distinct per-pair values (exact for agreement, accuracy and IoU
differences, whose values come from a small set; values are put on a 4,096-level grid only when
there are more distinct ones, moving a resample's mean by under 2.5e-4), and a quantile of a
resample is the order statistic at a Beta-distributed rank (exact for the percentile bootstrap).

Light at import: numpy and pandas are imported inside the functions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from moola_core.errors import MoolaError
from moola_core.spec import LABELS

N_BOOT = 1000  # resamples per CI, as moola_core.metrics
LEVEL = 0.95
PRIMARY = "span_iou"  # the metric `invoke select` chooses by; accuracy must not get worse
MIN_EFFECT = 0.01  # with no observed difference, "more requests" is sized to detect this much
MAX_GRID = 4096  # distinct values above which a bootstrap mean works on a value grid
SHADOW_ERROR_MARGIN = 0.01  # shadow failing this much more often than live is a reason to keep


@dataclass
class Estimate:
    """A figure with its bootstrap CI."""

    value: float
    ci_low: float
    ci_high: float

    def fmt(self, digits: int = 3, signed: bool = False) -> str:
        sign = "+" if signed else ""
        return (
            f"{self.value:{sign}.{digits}f} [{self.ci_low:{sign}.{digits}f}, "
            f"{self.ci_high:{sign}.{digits}f}]"
        )


@dataclass
class ABResult:
    """Everything `invoke ab` reports; `to_dict()` is its JSON form."""

    live_release: str
    shadow_release: str
    n_pairs: int
    agreement: Estimate
    span_iou: Estimate  # between the two releases' predicted spans
    latency_ms: dict[str, dict[str, Estimate]]  # role -> {"p50", "p99"}
    shadow_errors: int = 0  # shadow answers that were errors, on live-answered requests
    shadow_error_rate: float = 0.0
    live_error_rate: float = 0.0
    since: float | None = None
    until: float | None = None
    outcomes: dict[str, Any] | None = None  # n, n_unmatched, accuracy/span_iou {live, shadow, diff}
    decision: str = "more-evidence"  # promote | keep | more-evidence
    more_requests: int | None = None
    sentence: str = ""
    labels: dict[str, dict[str, float]] = field(default_factory=dict)  # role -> label mix

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- bootstrap ---------------------------------------------------------------------------------


def _rng(seed: int):
    import numpy as np

    return np.random.default_rng(seed)


def _interval(boot, level: float) -> tuple[float, float]:
    import numpy as np

    tail = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [tail, 1.0 - tail])
    return float(low), float(high)


def boot_mean(values, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Estimate:
    """Mean of `values` with a percentile-bootstrap CI (multinomial over distinct values)."""
    import numpy as np

    values = np.asarray(values, dtype=float).reshape(-1)
    n = len(values)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan)
    uniq, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    if len(uniq) > MAX_GRID:
        # the grid keeps each bin's mean value, so the full-sample mean is unchanged
        edges = np.linspace(values.min(), values.max(), MAX_GRID + 1)
        bins = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, MAX_GRID - 1)
        counts = np.bincount(bins, minlength=MAX_GRID)
        sums = np.bincount(bins, weights=values, minlength=MAX_GRID)
        keep = counts > 0
        uniq, counts = sums[keep] / counts[keep], counts[keep]
    rng = _rng(seed)
    draws = rng.multinomial(n, counts / n, size=n_boot)  # [B, K]
    boot = draws @ uniq / n
    low, high = _interval(boot, level)
    return Estimate(float(values.mean()), low, high)


def boot_quantile(
    values, q: float, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
) -> Estimate:
    """The q-quantile of `values` with a percentile-bootstrap CI.

    A resample's k-th smallest value is the original's value at rank ceil(n * U), U ~ Beta(k,
    n - k + 1) (the k-th of n uniform order statistics), so no resample is ever materialised.
    """
    import numpy as np

    values = np.sort(np.asarray(values, dtype=float).reshape(-1))
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan)
    k = min(n, max(1, math.ceil(q * n)))
    u = _rng(seed).beta(k, n - k + 1, size=n_boot)
    ranks = np.clip(np.ceil(u * n).astype(np.int64) - 1, 0, n - 1)
    low, high = _interval(values[ranks], level)
    return Estimate(float(np.quantile(values, q)), low, high)


# --- pairing -----------------------------------------------------------------------------------


def pair(table, shadow_release: str | None = None):
    """Join live and shadow answers on (request_id, index).

    Returns (pairs DataFrame with live_* and shadow_* columns, facts dict). The shadow release
    defaults to the newest one captured; the live release is the one most of its pairs met.
    """
    import numpy as np
    import pandas as pd

    cols = table.columns
    role = cols["role"]
    if len(table) == 0:
        raise MoolaError(
            "no captured requests in the chosen time window; send traffic or widen --since"
        )
    shadow_mask = role == 1
    if not shadow_mask.any():
        raise MoolaError(
            "no shadow answers are captured: start one with `invoke shadow start --host H "
            "--candidate VERSION` and send traffic first"
        )
    if shadow_release is None:
        newest = int(np.argmax(np.where(shadow_mask, cols["time"], -np.inf)))
        shadow_release = str(cols["release"][newest])
    elif not (shadow_mask & (cols["release"] == shadow_release)).any():
        found = sorted(set(cols["release"][shadow_mask].tolist()))
        raise MoolaError(
            f"no shadow answers from {shadow_release} are captured; shadow releases seen: "
            f"{', '.join(found)}"
        )
    frame = pd.DataFrame({k: cols[k] for k in cols})
    live = frame[frame["role"] == 0]
    shadow = frame[(frame["role"] == 1) & (frame["release"] == shadow_release)]
    keys = ["request_id", "index"]
    both = live.merge(shadow, on=keys, suffixes=("_live", "_shadow"), validate="many_to_many")
    both = both.drop_duplicates(subset=keys, keep="last")
    if both.empty:
        raise MoolaError(
            f"none of the {len(shadow)} shadow answers from {shadow_release} has a live answer "
            "with the same request id; is the live side forwarding X-Moola-Request-Id?"
        )
    live_release = both["release_live"].mode().iloc[0]
    both = both[both["release_live"] == live_release]
    ok_live = both["status_live"] == 200
    ok_shadow = both["status_shadow"] == 200
    facts = {
        "live_release": str(live_release),
        "shadow_release": shadow_release,
        "shadow_errors": int((ok_live & ~ok_shadow).sum()),
        "shadow_error_rate": float((ok_live & ~ok_shadow).sum() / max(1, ok_live.sum())),
        "live_error_rate": float((~ok_live).sum() / max(1, len(both))),
    }
    pairs = both[ok_live & ok_shadow & (both["label_live"] >= 0) & (both["label_shadow"] >= 0)]
    return pairs.reset_index(drop=True), facts


# --- analysis ----------------------------------------------------------------------------------


def analyze(
    table,
    outcomes=None,
    *,
    shadow_release: str | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    since: float | None = None,
    until: float | None = None,
) -> ABResult:
    """The A/B report of a CaptureTable; `outcomes` is a labeled DataFrame (or None)."""
    import numpy as np

    from moola_core.metrics import span_iou

    pairs, facts = pair(table, shadow_release)
    n = len(pairs)
    if n == 0:
        raise MoolaError(
            f"{facts['shadow_release']} answered no request successfully that "
            f"{facts['live_release']} answered too; see `invoke shadow status` and its log"
        )
    agree = (pairs["label_live"].to_numpy() == pairs["label_shadow"].to_numpy()).astype(float)
    between = span_iou(
        pairs["start_live"], pairs["end_live"], pairs["start_shadow"], pairs["end_shadow"]
    )
    # latency is a property of a request (its windows share one), so one value per request
    per_request = pairs.drop_duplicates("request_id")
    latency = {
        role: {
            "p50": boot_quantile(per_request[f"latency_ms_{role}"], 0.50, n_boot, seed + 1),
            "p99": boot_quantile(per_request[f"latency_ms_{role}"], 0.99, n_boot, seed + 2),
        }
        for role in ("live", "shadow")
    }
    mix = {}
    for role in ("live", "shadow"):
        counts = np.bincount(pairs[f"label_{role}"].to_numpy().astype(int), minlength=len(LABELS))
        mix[role] = {name: float(counts[i] / n) for i, name in enumerate(LABELS)}
    result = ABResult(
        live_release=facts["live_release"],
        shadow_release=facts["shadow_release"],
        n_pairs=n,
        agreement=boot_mean(agree, n_boot, seed + 3),
        span_iou=boot_mean(between, n_boot, seed + 4),
        latency_ms=latency,
        shadow_errors=facts["shadow_errors"],
        shadow_error_rate=facts["shadow_error_rate"],
        live_error_rate=facts["live_error_rate"],
        since=since,
        until=until,
        labels=mix,
    )
    if outcomes is not None:
        result.outcomes = _with_outcomes(pairs, outcomes, n_boot, seed)
    decide(result)
    return result


def _with_outcomes(pairs, outcomes, n_boot: int, seed: int) -> dict[str, Any]:
    import numpy as np

    from moola_core.metrics import span_iou

    truth = outcomes[["window_id", "label", "expansion_start", "expansion_end"]].copy()
    truth["window_id"] = truth["window_id"].astype(str)
    truth = truth.drop_duplicates("window_id", keep="last")
    with_id = pairs[pairs["window_id_live"] != ""]
    joined = with_id.merge(truth, left_on="window_id_live", right_on="window_id", how="inner")
    if joined.empty:
        raise MoolaError(
            f"none of the {len(with_id)} paired windows with a window_id is in the outcomes file "
            f"({len(pairs) - len(with_id)} more have no window_id): check that the traffic "
            "sent those ids and that the file is the right one"
        )
    true_label = joined["label"].map({name: i for i, name in enumerate(LABELS)}).to_numpy()
    ts, te = joined["expansion_start"].to_numpy(), joined["expansion_end"].to_numpy()
    out: dict[str, Any] = {"n": int(len(joined)), "n_without": int(len(pairs) - len(joined))}
    per_role = {}
    for role in ("live", "shadow"):
        correct = (joined[f"label_{role}"].to_numpy() == true_label).astype(float)
        iou = span_iou(joined[f"start_{role}"], joined[f"end_{role}"], ts, te)
        per_role[role] = {"accuracy": correct, "span_iou": iou}
    for metric in ("accuracy", "span_iou"):
        a, b = per_role["live"][metric], per_role["shadow"][metric]
        diff = b - a
        out[metric] = {
            "live": asdict(boot_mean(a, n_boot, seed + 5)),
            "shadow": asdict(boot_mean(b, n_boot, seed + 6)),
            "diff": asdict(boot_mean(diff, n_boot, seed + 7)),
            "diff_sd": float(np.std(diff, ddof=1)) if len(diff) > 1 else math.nan,
        }
    return out


def needed_requests(diff: dict, n: int) -> int:
    """How many requests in all (with outcomes) make the 95% CI exclude zero at the observed
    effect (at least MIN_EFFECT): the CI's half-width shrinks as 1/sqrt(n)."""
    half = (diff["ci_high"] - diff["ci_low"]) / 2.0
    effect = max(abs(diff["value"]), MIN_EFFECT)
    if not math.isfinite(half) or half <= 0:
        return n
    return math.ceil(n * (half / effect) ** 2)


def decide(result: ABResult) -> ABResult:
    """Fill `decision`, `more_requests` and the one sentence."""
    live, cand = result.live_release, result.shadow_release
    agree = f"they agree on {100 * result.agreement.value:.1f}% of labels"
    if result.shadow_error_rate > result.live_error_rate + SHADOW_ERROR_MARGIN:
        result.decision = "keep"
        result.sentence = (
            f"keep {live}: {cand} failed {100 * result.shadow_error_rate:.1f}% of the "
            f"{result.n_pairs + result.shadow_errors} shadowed requests that {live} answered."
        )
        return result
    if result.outcomes is None:
        result.decision = "more-evidence"
        result.sentence = (
            f"not enough evidence yet: no outcomes were given (--outcomes FILE), so accuracy "
            f"is unknown; on {result.n_pairs:,} paired requests {agree} "
            f"and their spans overlap with IoU {result.span_iou.value:.3f}."
        )
        return result
    o = result.outcomes
    n = o["n"]
    iou, acc = o["span_iou"]["diff"], o["accuracy"]["diff"]
    facts = (
        f"span IoU {_change(iou)} and accuracy {_change(acc)} on {n:,} requests with known "
        "outcomes (shadow - live, 95% CIs)"
    )
    worse = [name for name, d in (("span IoU", iou), ("accuracy", acc)) if d["ci_high"] < 0]
    better = [d for d in (iou, acc) if d["ci_low"] > 0]
    if worse:
        result.decision = "keep"
        result.sentence = f"keep {live}: {cand} is worse in {' and '.join(worse)}: {facts}."
    elif better:
        result.decision = "promote"
        result.sentence = f"promote {cand}: it beats {live} with {facts}."
    elif all(d["ci_high"] < MIN_EFFECT for d in (iou, acc)):
        # both intervals rule out a gain worth having: more traffic would not change the answer
        result.decision = "keep"
        result.sentence = (
            f"keep {live}: {cand} gains less than {MIN_EFFECT} in either metric: {facts}."
        )
    else:
        more = min(needed_requests(iou, n), needed_requests(acc, n)) - n
        # requests with outcomes are a share of all shadowed requests
        share = n / max(1, n + o["n_without"])
        result.more_requests = max(1, math.ceil(max(more, 1) / share))
        result.decision = "more-evidence"
        result.sentence = (
            f"not enough evidence yet: {facts}; at the observed effect about "
            f"{result.more_requests:,} more shadowed requests would settle it."
        )
    return result


def _change(d: dict) -> str:
    return f"{d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def render_text(result: ABResult) -> list[str]:
    """Plain lines for a terminal: the figures, then the decision sentence."""
    lat = result.latency_ms
    lines = [
        f"A/B {result.shadow_release} (shadow) vs {result.live_release} (live): "
        f"{result.n_pairs:,} paired requests",
        f"  label agreement      {result.agreement.fmt()}",
        f"  span IoU between     {result.span_iou.fmt()}",
        f"  latency p50 ms       live {lat['live']['p50'].fmt(2)}   "
        f"shadow {lat['shadow']['p50'].fmt(2)}",
        f"  latency p99 ms       live {lat['live']['p99'].fmt(2)}   "
        f"shadow {lat['shadow']['p99'].fmt(2)}",
        f"  shadow errors        {result.shadow_errors} ({100 * result.shadow_error_rate:.2f}%)",
    ]
    if result.outcomes:
        o = result.outcomes
        for metric in ("accuracy", "span_iou"):
            m = o[metric]
            lines.append(
                f"  {metric:<20} live {Estimate(**m['live']).fmt()}  "
                f"shadow {Estimate(**m['shadow']).fmt()}  diff {Estimate(**m['diff']).fmt(3, True)}"
            )
        lines.append(f"  with outcomes        {o['n']:,} (without: {o['n_without']:,})")
    lines.append(result.sentence)
    return lines


def record(result: ABResult, host: str, *, pulled: str = "") -> None:
    """One deployment-log line (phase ab, step compare): the evidence phase 6 shows."""
    from moola_ops.journal import Journal

    # the line is about the candidate: `invoke checklist` shows it in phase 6 of the candidate's
    # deployment (promote: ok, keep: failed, not enough evidence yet: skipped)
    status = {"promote": "ok", "keep": "failed"}.get(result.decision, "skipped")
    Journal("ab", bundle=result.shadow_release).record(
        host,
        "compare",
        status,
        summary=result.sentence,
        decision=result.decision,
        live=result.live_release,
        candidate=result.shadow_release,
        n_pairs=result.n_pairs,
        agreement=result.agreement.value,
        span_iou_between=result.span_iou.value,
        outcomes=result.outcomes
        and {
            "n": result.outcomes["n"],
            "accuracy_diff": result.outcomes["accuracy"]["diff"],
            "span_iou_diff": result.outcomes["span_iou"]["diff"],
        },
        more_requests=result.more_requests,
        pulled=pulled,
    )


def run_ab(
    host_name: str,
    *,
    since: str = "",
    outcomes: str | None = None,
    candidate: str | None = None,
    inventory=None,
    inventory_path: str | None = None,
    cache=None,
    pull: bool = True,
    record_result: bool = True,
) -> tuple[ABResult, Any]:
    """`invoke ab`: pull the host's captures, analyse them, save ab.json, log the evidence."""
    import json as _json
    import time as _time
    from pathlib import Path

    from moola_ops.captures import DEFAULT_CACHE, load_table, parse_since, pull_host, resolve_host

    cache = Path(cache) if cache is not None else DEFAULT_CACHE
    start = parse_since(since)
    truth = None
    if outcomes:
        from moola_core.data.labeled import read_labeled

        if not Path(outcomes).is_file():
            raise MoolaError(f"--outcomes {outcomes} does not exist; give a labeled parquet file")
        truth = read_labeled(outcomes)
    host = resolve_host(host_name, inventory, inventory_path)
    pulled = pull_host(host, cache) if pull else None
    table = load_table(cache, host.name, since=start)
    result = analyze(table, truth, shadow_release=candidate, since=start, until=_time.time())
    folder = cache / host.name
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "ab.json.tmp"
    tmp.write_text(_json.dumps(result.to_dict()))
    tmp.replace(folder / "ab.json")
    if record_result:
        record(result, host.name, pulled=pulled.summary() if pulled else "")
    return result, pulled
