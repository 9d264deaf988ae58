"""The quality gate of phase 2: no model ships that does not beat the simple baselines.

A candidate run passes when, on its primary metric (span IoU by default):

1. on the **validation** split it beats the range-expansion heuristic AND the linear baseline
   by a paired difference whose 95% CI lies above 0 (both scored on the same resampled overlap
   groups), and
2. on the **test** split it shows no regression beyond the CI: the paired difference against
   each of them is not significantly below 0 (its CI's upper end is >= 0).

The result is written into the run's metrics.json (key "gate") and runs/selected.json, so a
bundle built from the run carries it in its manifest (`manifest.metrics["gate"]`). A person may
ship a failing run anyway with `invoke select --override "reason"`; the override (who, when,
why) is recorded beside the result. `gate_allows(manifest)` is the one pure check deploy calls.
Imports: numpy (through metrics) only when evaluating; gate_allows is pure Python.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from moola_core.bundle.gate import gate_allows  # noqa: F401  (its home: light, deploy uses it)

GATE_BASELINES = ("heuristic", "linear")
LEVEL = 0.95


def evaluate_gate(
    predictions: Mapping, metric: str = "span_iou", n_boot: int = 1000, seed: int = 0
) -> dict:
    """The gate for one run from its predictions.json content -> the record stored as "gate".

    {"passed", "metric", "level", "checks": [{"baseline", "split", "rule", "value", "ci_low",
    "ci_high", "ok"}], "summary"}. A baseline missing from the predictions fails its checks
    (a run trained before the linear baseline existed cannot prove it beats it).
    """
    from moola_core import metrics as M

    lower_better = metric in M.LOWER_IS_BETTER
    sign = -1.0 if lower_better else 1.0
    checks = []
    baselines = predictions.get("baselines", {})
    for split, rule in (("val", "beats"), ("test", "no_regression")):
        part = predictions.get(split)
        for name in GATE_BASELINES:
            base = baselines.get(name, {}).get(split)
            if part is None or base is None:
                checks.append(
                    {
                        "baseline": name,
                        "split": split,
                        "rule": rule,
                        "value": None,
                        "ci_low": None,
                        "ci_high": None,
                        "ok": False,
                        "missing": True,
                    }
                )
                continue
            truth = part["truth"]
            diff = M.paired_difference(
                [part], [base], truth, metric, n_boot=n_boot, seed=seed, level=LEVEL
            )
            # "better" means candidate - baseline > 0 for higher-is-better metrics
            value, low, high = (
                sign * diff["value"],
                *sorted((sign * diff["ci_low"], sign * diff["ci_high"])),
            )
            ok = low > 0 if rule == "beats" else high >= 0
            checks.append(
                {
                    "baseline": name,
                    "split": split,
                    "rule": rule,
                    "value": round(value, 4),
                    "ci_low": round(low, 4),
                    "ci_high": round(high, 4),
                    "ok": bool(ok),
                }
            )
    passed = all(c["ok"] for c in checks)
    return {
        "passed": passed,
        "metric": metric,
        "level": LEVEL,
        "checks": checks,
        "summary": gate_summary(checks, metric, passed),
        "evaluated_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def gate_summary(checks: list[dict], metric: str, passed: bool) -> str:
    """One sentence: which comparisons passed or failed, with the paired differences."""
    parts = []
    for c in checks:
        if c.get("missing"):
            parts.append(f"{c['split']} vs {c['baseline']}: no predictions")
            continue
        need = "CI above 0" if c["rule"] == "beats" else "CI not below 0"
        parts.append(
            f"{c['split']} vs {c['baseline']} {c['value']:+.3f} [{c['ci_low']:+.3f}, "
            f"{c['ci_high']:+.3f}] ({need}: {'ok' if c['ok'] else 'FAIL'})"
        )
    verdict = "passed" if passed else "FAILED"
    return f"quality gate {verdict} on paired {metric} differences: " + "; ".join(parts)
