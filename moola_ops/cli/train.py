"""`invoke train`, `invoke evaluate`, `invoke compare` and `invoke doctor`.

Training, scoring and comparison live in moola_core.train; these tasks parse flags, call one
function and render the result. torch and pandas load inside the task bodies only.
"""

from __future__ import annotations

from invoke.exceptions import Exit

from moola_ops.cli._common import READS, task, user_errors
from moola_ops.terminal import console, is_tty, print_json

HEADLINE = (
    "span_iou",
    "iou_ge_50",
    "start_hit3",
    "end_hit3",
    "boundary_mae",
    "accuracy",
    "macro_f1",
    "ece",
    "brier",
)


def _seeds(seed: str) -> list[int] | None:
    from moola_core.errors import MoolaError
    from moola_core.train import DEFAULT_SEEDS

    if not seed:
        return None
    if seed == "all":
        return list(DEFAULT_SEEDS)
    try:
        return [int(s) for s in seed.split(",")]
    except ValueError:
        raise MoolaError(f"--seed {seed!r} is not a number, a comma list or 'all'.") from None


def _cell(figures: dict, column: str) -> str:
    """`mean [CI]`, or '-' where a row has no such metric (ece/brier need probabilities)."""
    from moola_core.metrics import format_metric

    return format_metric(figures[column]) if column in figures else "-"


def _table(title: str, rows: list[tuple[str, dict]], columns=HEADLINE):
    """rich Table (TTY) or aligned plain text of `mean [CI]` per metric and row."""

    if is_tty():
        from rich.table import Table

        table = Table(title=title)
        table.add_column("")
        for column in columns:
            table.add_column(column, justify="right")
        for name, figures in rows:
            table.add_row(name, *(_cell(figures, c) for c in columns))
        return table
    lines = [title]
    for name, figures in rows:
        cells = "  ".join(f"{c}={_cell(figures, c)}" for c in columns)
        lines.append(f"  {name:<22} {cells}")
    return "\n".join(lines)


@task(
    help={
        "config": "training YAML (default configs/jade.yaml; variants in configs/jade_*.yaml)",
        "seed": "override the seed: one number, a comma list (17,13) or 'all' (17,13,23,29)",
        "epochs": "override optim.max_epochs (0, the default: keep the config's)",
        "pretrained": "pre-training run folder or encoder.pt to start the encoder from",
        "freeze": "with --pretrained: keep the encoder frozen and train only the heads",
        "runs_dir": "where runs/<run-id>/ folders go (default runs)",
        "json": "print every run's summary as one JSON document (progress goes to stderr)",
    },
    dry="train writes new runs under runs/; `invoke compare` shows the runs there now",
)
@user_errors
def train(
    c,
    config="configs/jade.yaml",
    seed="",
    epochs=0,
    pretrained="",
    freeze=False,
    runs_dir="runs",
    json=False,
):
    """Train one run per seed (a model per fold, then the final model); print its out-of-fold
    and calibration-split metrics next to the baselines, and its stream figures."""
    import sys

    def say(message: str) -> None:  # progress from the first second, on stderr (--json stays clean)
        print(f"train: {message}", file=sys.stderr, flush=True)

    say("loading torch and the training code")
    from moola_core.train import load_config, train_run
    from moola_core.train.data import prepare_data

    overrides: dict = {}
    if epochs:
        overrides["optim.max_epochs"] = int(epochs)
    if pretrained:
        overrides["pretrained_encoder"] = pretrained
        overrides["freeze_encoder"] = bool(freeze)
    base = load_config(config, overrides)
    seeds = _seeds(seed) or [base.seed]
    say(f"{config}: preparing the data (features per window, time split)")
    data = prepare_data(base)  # every seed trains and is scored on the same windows
    say(f"training {len(seeds)} run(s), seed(s) {', '.join(map(str, seeds))}")
    summaries = []
    out = console()
    for one_seed in seeds:
        result = train_run(base.model_copy(update={"seed": one_seed}), runs_dir, data=data)
        summaries.append(result.metrics)
        if not json:
            _print_run(out, result)
    if json:
        print_json(summaries if len(summaries) > 1 else summaries[0])


def _print_run(out, result) -> None:
    """A finished run: where it went, its out-of-fold and calibration-split figures next to the
    baselines, and (live models, synthetic data) its stream figures."""
    m = result.metrics
    folds = ", ".join(str(f["best_epoch"]) for f in m["folds"])
    out.print(
        f"run {result.run_id}: {len(m['folds'])} folds (best epochs {folds}), final model "
        f"{m['final_epochs']} epochs, {m['train_seconds']:.0f}s, {m['n_parameters']} "
        f"parameters -> {result.path}"
    )
    for split, what in (
        ("oof", f"out of fold ({m['n_windows']['oof']} windows, what `invoke select` judges)"),
        ("calibration_split", f"calibration split ({m['n_windows']['calibration_split']} windows)"),
    ):
        rows = [(m["variant"], m[split])]
        rows += [(name, b[split]) for name, b in m["baselines"].items()]
        out.print(_table(f"{what}, 95% CI", rows))
    det = (m.get("detection") or {}).get("calibration_split")
    if det:  # an objectness model: how well it says "no pattern"
        out.print(
            f"saying 'no pattern' on the calibration split ({det['n_patterns']} patterns, "
            f"{det['n_pattern_free']} pattern-free): precision {det['precision']:.3f}, "
            f"recall {det['recall']:.3f}, F1 {det['f1']:.3f}"
        )
    stream = m.get("stream") or {}
    if "model" in stream:
        from moola_core.metrics import format_metric

        out.print(
            f"stream ({stream['sessions']} sessions, {stream['model']['events']} expansions):"
        )
        for name, figures in [(m["variant"], stream["model"]), *stream["baselines"].items()]:
            out.print(
                f"  {name:<22} false alarms per 1,000 bars "
                f"{format_metric(figures['false_alarms_per_1k'])}, recall within "
                f"{figures['within']} bars {format_metric(figures['recall_within'])}"
            )
    elif stream.get("skipped"):
        out.print(f"stream: {stream['skipped']}")


@task(
    help={
        "run": "run id (a folder under --runs-dir)",
        "runs_dir": "runs folder (default runs)",
        "json": "print the report as one JSON document",
    },
    dry=READS,
)
@user_errors
def evaluate(c, run, runs_dir="runs", json=False):
    """Re-score a run's out-of-fold and calibration-split predictions from its files; exit 1 if
    they differ from the record."""
    from moola_core.train import evaluate_run

    report = evaluate_run(run, runs_dir)
    if json:
        print_json(report)
    else:
        out = console()
        for split in ("oof", "calibration_split"):
            rows = [(report["variant"], report[split])]
            rows += [
                (f"{name} (recorded)", b[split])
                for name, b in report["baselines"].items()
                if split in b
            ]
            out.print(_table(f"{run}: {split} ({report[split]['n']} windows), 95% CI", rows))
        out.print(
            "reproduces the recorded metrics: "
            + ("yes" if report["matches_recorded"] else "NO (data or code changed since)")
        )
    if not report["matches_recorded"]:
        raise Exit(code=1)


@task(
    help={
        "runs_dir": "runs folder (default runs)",
        "split": "what to compare on: oof (out of fold, the default: what select judges) or "
        "calibration_split (the final models on the sealed split)",
        "markdown": "print a Markdown table (for docs and reviews)",
        "json": "print the comparison as one JSON document",
    },
    dry=READS,
)
@user_errors
def compare(c, runs_dir="runs", split="oof", markdown=False, json=False):
    """Variants x seeds table with 95% CIs next to the baselines (input to `invoke select`)."""
    from moola_core.train import compare_runs

    table = compare_runs(runs_dir, split=split)
    if json:
        print_json(table.to_dict())
        return
    if markdown:
        print(table.markdown())
        return
    rows = []
    for row in table.rows:
        seeds = ",".join(str(s) for s in row["seeds"])
        rows.append((f"{row['variant']} [{seeds}]" if seeds else row["variant"], row["metrics"]))
    n = table.rows[0]["n"] if table.rows else 0
    console().print(_table(f"{split} split ({n} windows): mean over seeds [95% CI]", rows))
    if table.skipped:
        console().print(f"skipped (no predictions.json): {', '.join(table.skipped)}")


# -- doctor --------------------------------------------------------------------------------


def doctor_checks(root: str = ".") -> list[dict]:
    """Every environment check (moola_ops.checklist.doctor, where the logic lives)."""
    from moola_ops.checklist.doctor import doctor_checks as checks

    return checks(root)


@task(
    help={"json": "print the checks as one JSON document"},
    dry=READS,
)
@user_errors
def doctor(c, json=False):
    """Check Python, packages, torch/CUDA, sshd, data paths and `pip check`; exit 1 on a failure."""
    checks = doctor_checks()
    failed = [ch for ch in checks if ch["status"] == "fail"]
    if json:
        print_json({"ok": not failed, "checks": checks})
    else:
        out = console()
        colour = {"ok": "green", "warn": "yellow", "fail": "red"}
        for ch in checks:
            tag = ch["status"].upper()
            if is_tty():
                tag = f"[{colour[ch['status']]}]{tag:<4}[/]"
            line = f"{tag:<4} {ch['name']:<22} {ch['detail']}"
            if ch["fix"]:
                line += f"  -> {ch['fix']}"
            out.print(line, markup=is_tty())
    if failed:
        raise Exit(code=1)


EXPORTS = [train, evaluate, compare, doctor]
