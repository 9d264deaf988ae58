"""May a bundle be deployed? The quality gate's verdict as phase 2 recorded it in the manifest.

Standard library only: the deploy engine calls it from the ops-only install (no numpy, no torch).
The gate itself is computed in moola_core.train.gate; this module only reads its verdict.
"""

from __future__ import annotations

from collections.abc import Mapping


def gate_verdict(manifest) -> Mapping | None:
    """The run's recorded gate verdict (`metrics.gate`) in a Manifest, its dict or a metrics dict;
    None when the run never went through phase 2."""
    if hasattr(manifest, "model_dump"):
        manifest = manifest.model_dump(mode="json")
    manifest = manifest if isinstance(manifest, Mapping) else {}
    metrics = manifest.get("metrics") if isinstance(manifest.get("metrics"), Mapping) else manifest
    gate = metrics.get("gate")
    return gate if isinstance(gate, Mapping) and "passed" in gate else None


def gate_allows(manifest) -> tuple[bool, str]:
    """May this bundle be deployed? -> (ok, one sentence). Pure: reads the manifest only.

    `manifest` is a bundle Manifest, its dict, or a run's metrics dict. Allowed when the run's
    recorded gate passed, or when it failed and carries a person's override; refused when it
    failed without one or when no gate result is recorded (the run never went through phase 2).
    """
    if hasattr(manifest, "model_dump"):
        manifest = manifest.model_dump(mode="json")
    manifest = manifest if isinstance(manifest, Mapping) else {}
    metrics = manifest.get("metrics") if isinstance(manifest.get("metrics"), Mapping) else manifest
    run = manifest.get("run_id") or metrics.get("run_id") or "the run"
    gate = gate_verdict(manifest)
    if gate is None:
        return False, (
            f"{run} carries no quality-gate result: run `invoke select` (phase 2) on it and "
            "rebuild the bundle, or choose a bundle whose run passed the gate."
        )
    if gate.get("passed") is True:
        return True, f"{run} passed the quality gate ({gate.get('metric', 'span_iou')})."
    override = gate.get("override")
    if isinstance(override, Mapping) and str(override.get("reason", "")).strip():
        return True, (
            f"{run} failed the quality gate but {override.get('by') or 'someone'} overrode it "
            f"on {override.get('at') or '?'}: {override['reason']}"
        )
    return False, (
        f"{run} failed the quality gate ({gate.get('summary') or 'see runs/selected.json'}); "
        'train a better model, or ship it anyway with `invoke select --override "reason"` '
        "and rebuild the bundle."
    )
