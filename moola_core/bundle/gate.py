"""May a bundle be deployed? The quality gate's verdict as phase 2 recorded it in the manifest.

Standard library only: the deploy engine calls it from the ops-only install (no numpy, no torch).
The gate itself is decided in moola_core.train.gate; this module only reads its verdict.

A bundle's gate state is one of:

- "passed": its run's variant passed the gate;
- "overridden": it failed and a person overrode it at `invoke select --override` (recorded in
  the manifest);
- "failed": it failed and nobody overrode it;
- "unjudged": its run never went through phase 2 (no verdict at all).

Deploy ships "passed" and "overridden" bundles; "failed" and "unjudged" ones only with a
person's override at deploy time (`invoke deploy --override-gate "reason"`), which the log
records as its own state, never as a pass.
"""

from __future__ import annotations

from collections.abc import Mapping

STATES = ("passed", "overridden", "failed", "unjudged")


def _as_dict(manifest) -> Mapping:
    if hasattr(manifest, "model_dump"):
        manifest = manifest.model_dump(mode="json")
    return manifest if isinstance(manifest, Mapping) else {}


def gate_verdict(manifest) -> Mapping | None:
    """The run's recorded gate verdict (`metrics.gate`) in a Manifest, its dict or a metrics dict;
    None when the run never went through phase 2."""
    manifest = _as_dict(manifest)
    metrics = manifest.get("metrics") if isinstance(manifest.get("metrics"), Mapping) else manifest
    gate = metrics.get("gate")
    return gate if isinstance(gate, Mapping) and "passed" in gate else None


def gate_state(manifest) -> tuple[str, str]:
    """The bundle's gate state (one of STATES) and one sentence saying why. Pure."""
    manifest = _as_dict(manifest)
    metrics = manifest.get("metrics") if isinstance(manifest.get("metrics"), Mapping) else manifest
    run = manifest.get("run_id") or metrics.get("run_id") or "the run"
    gate = gate_verdict(manifest)
    if gate is None:
        return "unjudged", (
            f"{run} carries no quality-gate result (it never went through `invoke select`, "
            "phase 2): select it and rebuild the bundle, choose a bundle whose run passed, or "
            'deploy it anyway with --override-gate "reason"'
        )
    if gate.get("passed") is True:
        return "passed", f"{run} passed the quality gate ({gate.get('metric', 'span_iou')})"
    override = gate.get("override")
    if isinstance(override, Mapping) and str(override.get("reason", "")).strip():
        return "overridden", (
            f"{run} failed the quality gate; {override.get('by') or 'someone'} overrode it at "
            f"selection on {override.get('at') or '?'}: {override['reason']}"
        )
    return "failed", (
        f"{run} failed the quality gate ({gate.get('summary') or 'see runs/selected.json'}); "
        'train a better model, ship it anyway with `invoke select --override "reason"` and '
        'rebuild the bundle, or deploy it with --override-gate "reason"'
    )


def gate_allows(manifest) -> tuple[bool, str]:
    """May this bundle be deployed without a deploy-time override? -> (ok, one sentence).

    `manifest` is a bundle Manifest, its dict, or a run's metrics dict. Allowed when the run's
    gate passed or was overridden at selection; refused when it failed or never ran."""
    state, why = gate_state(manifest)
    return state in ("passed", "overridden"), why + "."
