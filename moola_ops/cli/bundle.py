"""`invoke bundle --version V`: phase 3, a verified, reproducible bundle; `bundle.verify`,
`bundle.show`. Heavy imports (torch, pydantic) stay inside the task bodies.
"""

from __future__ import annotations

from pathlib import Path

from invoke import Collection

from moola_core.errors import MoolaError
from moola_ops.cli._common import READS, task, user_errors
from moola_ops.log import steps
from moola_ops.terminal import console, print_json

PATH_HELP = "bundle version (v0.3: bundles/moola-v0.3.tar.gz), archive or extracted bundle folder"


def _log(version: str, status: str, **detail) -> None:
    """One line in the deployment log for every build attempt (a forced rebuild included)."""
    from moola_ops.log import journal

    journal.append(
        journal.Event(
            deployment=journal.new_deployment_id(),
            actor=journal.current_actor(),
            host="",
            bundle=version,
            phase=steps.BUNDLE,
            step=steps.BUNDLE_BUILD,
            status=status,
            detail=detail,
        )
    )


@task(
    help={
        "version": "bundle version: v + numbers and dots, optional -suffix (v0.3, v1.0.0-rc1)",
        "run": "training run id under runs/ (default: the run in runs/selected.json)",
        "override": "why a --run other than the selected one ships (recorded; the checklist's "
        "phase 2 shows it); without it such a run is refused",
        "force": "replace an existing archive of this version (logged; versions are immutable)",
        "sign": "private SSH key to sign manifest.json with (ssh-keygen -Y sign)",
        "sla_p99_ms": "latency SLA the runtime check enforces: p99 in ms (default 5)",
        "out": "folder for the archive (default bundles)",
        "json": "print the result as one JSON document",
    },
    default=True,
    dry="bundle build writes an archive under bundles/; `invoke select` names the run it would "
    "package by default",
)
@user_errors
def build(
    c,
    version,
    run=None,
    force=False,
    sign=None,
    sla_p99_ms=5.0,
    out="bundles",
    override="",
    json=False,
):
    """Build bundles/moola-<version>.tar.gz from a training run, then verify it."""
    from moola_core.bundle import BundleError, validate_version
    from moola_core.bundle.build import build_bundle

    validate_version(version)  # before the name reaches the log, a path or a command
    selected = _selected_run()
    override = " ".join((override or "").split())
    if run and selected and run != selected and not override:
        raise MoolaError(
            f"run {run} is not the selected run {selected} (runs/selected.json): select it with "
            "`invoke select`, or pass --override 'why this run ships' (recorded in the log)"
        )
    try:
        built = build_bundle(
            version, run, out_dir=out, force=force, sign_key=sign, sla_p99_ms=float(sla_p99_ms)
        )
    except BundleError as exc:
        refused = "immutable" in str(exc)
        _log(version, "refused" if refused else "failed", error=str(exc), force=force)
        raise
    _log(
        version,
        "ok",
        path=str(built.path),
        sha256=built.sha256,
        run_id=built.manifest.run_id,
        force=force,
        replaced=built.replaced,
        signed=built.signed,
        selected_run=selected or "",
        **({"override": override} if override and built.manifest.run_id != selected else {}),
    )
    result = {
        "path": str(built.path),
        "sha256": built.sha256,
        "version": built.manifest.version,
        "run_id": built.manifest.run_id,
        "files": len(built.manifest.files),
        "replaced": built.replaced,
        "signed": built.signed,
    }
    if json:
        print_json(result)
        return
    out_console = console()
    if built.replaced:
        out_console.print(f"replaced the existing {built.path} (--force, logged)")
    out_console.print(
        f"built {built.path}  {built.manifest.version} from run {built.manifest.run_id}, "
        f"{len(built.manifest.files)} files, {'signed' if built.signed else 'unsigned'}"
    )
    out_console.print(f"sha256 {built.sha256}")


@task(
    positional=["path"],
    help={
        "path": PATH_HELP,
        "allowed_signers": "OpenSSH allowed_signers file; when given the signature must verify",
        "json": "print the result as one JSON document",
    },
    dry=READS,
)
@user_errors
def verify(c, path, allowed_signers=None, json=False):
    """Check every file against the manifest (and the signature); name the first that differs."""
    from moola_core.bundle.verify import verify_bundle

    info = verify_bundle(_locate(path), allowed_signers=allowed_signers)
    result = {
        "ok": True,
        "path": str(info.path),
        "version": info.manifest.version,
        "files": len(info.manifest.files),
        "sha256": info.sha256,
        "signed": info.signed,
        "signer": info.signer,
    }
    if json:
        print_json(result)
        return
    signature = (
        f", signed by {info.signer}"
        if info.signer
        else (", signed (not checked)" if info.signed else ", unsigned")
    )
    console().print(
        f"ok {info.manifest.version}: {len(info.manifest.files)} files match{signature}"
    )


@task(
    positional=["path"],
    help={
        "path": PATH_HELP,
        "json": "print the whole manifest as one JSON document",
    },
    dry=READS,
)
@user_errors
def show(c, path, json=False):
    """Show a bundle's manifest: version, provenance, model, metrics, files (after verifying)."""
    from moola_core.bundle.verify import verify_bundle

    info = verify_bundle(_locate(path))
    manifest = info.manifest
    if json:
        print_json({**manifest.model_dump(mode="json"), "archive_sha256": info.sha256})
        return
    from rich.table import Table

    source = manifest.source
    commit = (source.commit or "unknown")[:12] + (" (dirty)" if source.dirty else "")
    facts = Table(show_header=False, box=None, pad_edge=False)
    for key, value in [
        ("version", manifest.version),
        ("created", f"{manifest.created_at} by {manifest.creator}"),
        ("source", commit),
        ("run", manifest.run_id),
        ("model", f"{manifest.model.architecture}, {manifest.model.parameters} parameters"),
        ("dataset", manifest.dataset_fingerprint),
        ("features", f"{len(manifest.feature_spec.names)} x {manifest.feature_spec.window_len}"),
        ("built with", f"python {manifest.runtime.python}, torch {manifest.runtime.torch}"),
        ("latency SLA", f"p99 <= {manifest.latency_sla_p99_ms:g} ms"),
        ("golden", f"{manifest.golden.n_windows} windows, atol {manifest.golden.class_probs_atol}"),
        ("signed", "yes" if info.signed else "no"),
        ("archive sha256", info.sha256 or "-"),
    ]:
        facts.add_row(key, str(value))
    out = console()
    out.print(facts)
    table = metrics_table(manifest.metrics)
    if table is not None:
        out.print(table)
    files = Table("file", "bytes", "sha256", box=None, pad_edge=False)
    for entry in manifest.files:
        if not entry.path.startswith("code/"):
            files.add_row(entry.path, str(entry.size), entry.sha256[:16])
    code = [e for e in manifest.files if e.path.startswith("code/")]
    files.add_row(f"code/ ({len(code)} files)", str(sum(e.size for e in code)), "")
    out.print(files)


def _selected_run(runs_dir: str = "runs") -> str:
    """The run id phase 2 chose (runs/selected.json), or "" when none is recorded."""
    import json as _json

    try:
        return str(_json.loads((Path(runs_dir) / "selected.json").read_text())["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _locate(spec: str) -> Path:
    """A bundle path as given, or the version `v0.3` -> bundles/moola-v0.3.tar.gz (as deploy)."""
    path = Path(spec)
    if path.exists():
        return path
    archive = Path("bundles") / f"moola-{spec}.tar.gz"
    if "/" not in spec and archive.is_file():
        return archive
    raise MoolaError(
        f"bundle {spec!r} not found: pass an archive, an extracted bundle folder or a version "
        f"whose {archive} exists (build it with `invoke bundle --version VERSION`)."
    )


def metrics_table(metrics: dict):
    """Held-out metrics as a table: one row per metric, a column per split (value [95% CI]),
    then the baselines' headline figures; None when the bundle carries no metrics."""
    from rich.table import Table

    splits = [
        s for s in ("oof", "calibration_split") if isinstance(metrics.get(s), dict) and metrics[s]
    ]
    rows: dict[str, dict[str, str]] = {}
    for split in splits:
        for name, value in metrics[split].items():
            cell = _cell(value)
            if cell:
                rows.setdefault(name, {})[split] = cell
    baselines = metrics.get("baselines") if isinstance(metrics.get("baselines"), dict) else {}
    if not rows and not baselines:
        flat = _flat(metrics)
        if not flat:
            return None
        table = Table(
            "metric", "value", title="metrics", box=None, pad_edge=False, title_justify="left"
        )
        for key, value in flat.items():
            table.add_row(key, str(value))
        return table
    table = Table(
        "metric", *splits, title="metrics (95% CI)", box=None, pad_edge=False, title_justify="left"
    )
    for name, cells in rows.items():
        table.add_row(name, *(cells.get(split, "-") for split in splits))
    for base, figures in baselines.items():
        if not isinstance(figures, dict):
            continue
        cells = []
        for split in splits:
            values = figures.get(split)
            values = values if isinstance(values, dict) else {}
            cells.append(_cell(values.get("span_iou")) or _cell(values.get("accuracy")) or "-")
        table.add_row(f"baseline {base}", *cells)
    return table


def _cell(value) -> str:
    """0.8123 -> "0.812"; {"value": .8, "ci_low": .7, "ci_high": .9} -> "0.800 [0.700, 0.900]"."""
    if isinstance(value, bool):
        return ""
    if isinstance(value, int | float):
        return f"{value:.3f}" if isinstance(value, float) else str(value)
    if isinstance(value, dict) and isinstance(value.get("value"), int | float):
        text = f"{value['value']:.3f}"
        if isinstance(value.get("ci_low"), int | float) and isinstance(
            value.get("ci_high"), int | float
        ):
            text += f" [{value['ci_low']:.3f}, {value['ci_high']:.3f}]"
        return text
    return ""


def _flat(metrics: dict, prefix: str = "") -> dict:
    """Nested metrics -> {"test.accuracy": 0.81, ...} with numbers rounded for display."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = round(value, 4)
    return flat


bundle = Collection("bundle")
bundle.add_task(build, default=True)
bundle.add_task(verify)
bundle.add_task(show)

EXPORTS = [bundle]
