"""A/B on live traffic: the live release and its shadow, paired on the same requests.

The live server answers every request; a sample of them is copied to the candidate (the shadow)
without waiting for it. Both answers are captured with the same `request_id` and window `index`,
so each shadowed window is a pair. `analyze(table)` reports, with bootstrap 95% CIs:

- label agreement and span IoU *between* the two releases (no ground truth needed),
- latency p50/p99 of each release on the same requests,
- with ground truth (`outcomes`, a labeled set joined on `window_id`): the paired difference
  shadow - live in accuracy and in span IoU against the true span, and one decision sentence:
  promote, keep, or not enough evidence yet (with how many more requests it would take).

The bootstraps live in moola_ops/shadow/ab_stats.py, the promote/keep/wait rule in
moola_ops/shadow/ab_rule.py; this module re-exports both, so `ab.boot_mean`, `ab.decide` keep working.

Light at import: numpy and pandas are imported inside the functions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from moola_core.errors import MoolaError
from moola_core.spec import LABELS
from moola_ops.log import steps
from moola_ops.shadow.ab_rule import MIN_EFFECT, PRIMARY, QUALITY, decide, needed_requests
from moola_ops.shadow.ab_stats import LEVEL, MAX_GRID, N_BOOT, Estimate, boot_mean, boot_quantile

__all__ = [
    "LEVEL",
    "MAX_GRID",
    "MIN_EFFECT",
    "N_BOOT",
    "PRIMARY",
    "ABResult",
    "Estimate",
    "analyze",
    "boot_mean",
    "boot_quantile",
    "decide",
    "needed_requests",
    "pair",
    "record",
    "render_text",
    "run_ab",
]


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
    primary: str = PRIMARY  # the metric the decision goes by (moola_ops/shadow/ab_rule.py)
    sla_p99_ms: float | None = (
        None  # the shadow's p99 over it (even at its CI's low end) is a regression
    )
    error_diff: Estimate | None = None  # shadow - live error rate on the same requests
    reasons: list[str] = field(default_factory=list)  # what made the decision keep
    skipped_lines: int = 0  # capture lines that failed their checks (not in any figure)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    failed = (shadow["index"] == -1) & (shadow["status"] != 200)
    if failed.any():  # an error line stands for every window of its request
        windows = live.loc[live["index"] >= 0, keys].drop_duplicates()
        spread = windows.merge(shadow[failed].drop(columns="index"), on="request_id")
        shadow = pd.concat([shadow[~failed], spread[shadow.columns]], ignore_index=True)
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
    # per request: shadow failed (1) or not (0), minus the same for live
    flags = (
        pd.DataFrame({"request_id": both["request_id"], "live": ~ok_live, "shadow": ~ok_shadow})
        .groupby("request_id", sort=False)
        .max()
    )
    facts["error_diff"] = boot_mean(flags["shadow"].astype(float) - flags["live"].astype(float))
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
    primary: str = PRIMARY,
    sla_p99_ms: float | None = None,
) -> ABResult:
    """The A/B report of a CaptureTable; `outcomes` is a labeled DataFrame (or None).
    `primary`: the metric the decision goes by (span_iou or accuracy); `sla_p99_ms`: the
    shadow's latency p99 over it is a regression (moola_ops/shadow/ab_rule.py)."""
    import numpy as np

    from moola_core.metrics import span_iou

    if primary not in QUALITY:
        raise MoolaError(f"--primary {primary!r} is not one of {', '.join(QUALITY)}")
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
        primary=primary,
        sla_p99_ms=sla_p99_ms,
        error_diff=facts["error_diff"],
        skipped_lines=int(getattr(table, "skipped", 0)),
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
        f"  shadow errors        {result.shadow_errors} ({100 * result.shadow_error_rate:.2f}%)"
        + (f", error rate diff {result.error_diff.fmt(3, True)}" if result.error_diff else ""),
    ]
    if result.sla_p99_ms:
        lines.append(f"  latency SLA          p99 <= {result.sla_p99_ms:g} ms")
    if result.outcomes:
        o = result.outcomes
        for metric in ("accuracy", "span_iou"):
            m = o[metric]
            lines.append(
                f"  {metric:<20} live {Estimate(**m['live']).fmt()}  "
                f"shadow {Estimate(**m['shadow']).fmt()}  diff {Estimate(**m['diff']).fmt(3, True)}"
            )
        lines.append(f"  with outcomes        {o['n']:,} (without: {o['n_without']:,})")
    if result.skipped_lines:
        lines.append(
            f"  skipped lines        {result.skipped_lines:,} damaged, too long or out of range "
            "(in no figure; check the host)"
        )
    lines.append(result.sentence)
    return lines


def record(result: ABResult, host: str, *, pulled: str = "") -> None:
    """One deployment-log line (phase ab, step compare): the evidence phase 6 shows."""
    from moola_ops.log.journal import Journal

    # the line is about the candidate: `invoke checklist` shows it in phase 6 of the candidate's
    # deployment (promote: ok, keep: failed, not enough evidence yet: skipped)
    status = {"promote": "ok", "keep": "failed"}.get(result.decision, "skipped")
    Journal(steps.AB, bundle=result.shadow_release).record(
        host,
        steps.AB_COMPARE,
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
        primary=result.primary,
        reasons=result.reasons,
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
    primary: str = PRIMARY,
) -> tuple[ABResult, Any]:
    """`invoke ab`: pull the host's captures, analyse them, save ab.json, log the evidence.
    The latency SLA is the host's `latency_sla_ms`, else the candidate bundle's (read on the
    host when pulling)."""
    import json as _json
    import time as _time
    from pathlib import Path

    from moola_ops.serving.captures import DEFAULT_CACHE, load_table, parse_since, resolve_host
    from moola_ops.serving.captures_pull import pull_host

    cache = Path(cache) if cache is not None else DEFAULT_CACHE
    start = parse_since(since)
    truth = None
    if outcomes:
        from moola_core.data.labeled import read_labeled

        if not Path(outcomes).is_file():
            raise MoolaError(f"--outcomes {outcomes} does not exist; give a labeled parquet file")
        truth = read_labeled(outcomes)
    host = resolve_host(host_name, inventory, inventory_path)
    session = None
    if pull:
        from moola_ops.transport import HostSession

        session = HostSession(host).open()
    try:
        pulled = pull_host(host, cache, session) if session is not None else None
        table = load_table(cache, host.name, since=start)
        result = analyze(
            table,
            truth,
            shadow_release=candidate,
            since=start,
            until=_time.time(),
            primary=primary,
            sla_p99_ms=host.latency_sla_ms,
        )
        if result.sla_p99_ms is None and session is not None:
            from moola_ops.serving.control import release_manifest

            sla = (release_manifest(session, host, result.shadow_release) or {}).get(
                "latency_sla_p99_ms"
            )
            if sla:
                result.sla_p99_ms = float(sla)
                decide(result)
    finally:
        if session is not None:
            session.close()
    folder = cache / host.name
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "ab.json.tmp"
    tmp.write_text(_json.dumps(result.to_dict()))
    tmp.replace(folder / "ab.json")
    if record_result:
        record(result, host.name, pulled=pulled.summary() if pulled else "")
    return result, pulled
