"""`invoke data.*`: make a synthetic market and labeled set, validate a labeled parquet, report
split leakage, convert a trusted pickled set. Heavy imports stay inside the task bodies.
"""

from __future__ import annotations

from invoke import Collection
from invoke.exceptions import Exit

from moola_ops.cli._common import READS, task, user_errors
from moola_ops.terminal import console, is_tty, print_json


@task(
    help={
        "out": "directory for bars.parquet, labeled.parquet, split.json, leakage.json (default data)",
        "seed": "random seed; the same seed gives the same files (default 0)",
        "bars": "number of 1-minute bars in the unlabeled stream (0, the default: 19500 = 50 sessions)",
        "windows": "number of labeled windows (default 174, as in the real set)",
        "difficulty": "easy, default, hard, or a number in [0, 1] (see docs/data.md)",
        "json": "print the summary as one JSON document",
    },
    dry="data.market writes a data set; give --out a scratch folder instead",
)
@user_errors
def market(c, out="data", seed=0, bars=0, windows=174, difficulty="default", json=False):
    """Generate a synthetic market and labeled set, validate, split and check for leaks."""
    from moola_core.data.pipeline import DEFAULT_BARS, run_data_pipeline

    level = _difficulty(difficulty)
    summary = run_data_pipeline(
        out,
        seed=int(seed),
        n_bars=int(bars) or DEFAULT_BARS,
        n_windows=int(windows),
        difficulty=level,
    )
    if json:
        print_json(summary)
        return
    out_console = console()
    b, lab, sp, lk = summary["bars"], summary["labeled"], summary["split"], summary["leakage"]
    out_console.print(f"bars      {b['n']} bars in {b['sessions']} sessions -> {b['path']}")
    out_console.print(
        f"labeled   {lab['windows']} windows {lab['labels']}, {lab['errors']} errors, "
        f"{lab['warnings']} overlap warnings -> {lab['path']}"
    )
    out_console.print(
        f"split     train {sp['train']} / val {sp['val']} / test {sp['test']}, "
        f"{sp['purged']} purged by the embargo -> {sp['path']}"
    )
    out_console.print(f"leakage   {'none' if lk['ok'] else 'FOUND'} -> {lk['path']}")


def _difficulty(value: str) -> str | float:
    try:
        return float(value)
    except ValueError:
        return value


@task(
    help={
        "path": "labeled parquet to check (default data/labeled.parquet)",
        "strict": "treat windows that share bars as errors, not warnings",
        "json": "print the problems as one JSON document",
    },
    dry=READS,
)
@user_errors
def validate(c, path="data/labeled.parquet", strict=False, json=False):
    """Validate a labeled parquet; exit 1 and list every problem (row, column) when it has any."""
    from moola_core.data.labeled import read_labeled, validate_labeled
    from moola_core.data.problems import errors_only

    df = read_labeled(path, validate=False)
    problems = validate_labeled(df, strict_overlap=strict)
    errors = errors_only(problems)
    if json:
        print_json(
            {
                "path": path,
                "rows": len(df),
                "ok": not errors,
                "problems": [p.to_dict() for p in problems],
            }
        )
    else:
        out = console()
        for p in problems:
            style = "red" if p.severity == "error" else "yellow"
            out.print(f"[{style}]{p}[/]" if is_tty() else str(p), markup=is_tty())
        verdict = "ok" if not errors else f"{len(errors)} error(s)"
        out.print(f"{path}: {len(df)} windows, {verdict}, {len(problems) - len(errors)} warning(s)")
    if errors:
        raise Exit(code=1)


@task(
    help={
        "path": "labeled parquet (default data/labeled.parquet)",
        "split": "split.json to check (from `invoke data.market`); empty: split the set now",
        "embargo": "minutes that must separate consecutive splits (default 105)",
        "json": "print the report as one JSON document",
    },
    dry=READS,
)
@user_errors
def leakage(c, path="data/labeled.parquet", split="", embargo=105.0, json=False):
    """Print the leakage report of a split; exit 1 when windows sharing bars cross splits."""
    import json as jsonlib
    from pathlib import Path

    from moola_core.data.labeled import read_labeled
    from moola_core.data.splits import Split, leakage_report, split_labeled
    from moola_core.errors import MoolaError

    df = read_labeled(path)
    if split:
        try:
            raw = jsonlib.loads(Path(split).read_text())
            made = Split(
                **{k: raw[k] for k in ("train", "val", "test")}, purged=raw.get("purged", [])
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MoolaError(
                f"cannot read the split {split} ({exc}); pass a split.json "
                "written by `invoke data.market`."
            ) from None
    else:
        made = split_labeled(df, embargo_minutes=float(embargo))
    report = leakage_report(df, made, embargo_minutes=float(embargo))
    if json:
        print_json(report.to_dict())
    else:
        out = console()
        for name, counts in report.label_counts.items():
            out.print(f"{name:<6} {sum(counts.values()):>4} windows {counts}")
        if not report.time_checked:
            out.print("no start_ts/end_ts columns: overlap checked by identical bars only")
        for p in report.pairs:
            out.print(f"LEAK {p.window_a} ({p.split_a}) ~ {p.window_b} ({p.split_b}): {p.reason}")
        for breach in report.embargo_breaches:
            out.print(f"EMBARGO {breach}")
        out.print(
            "no leakage"
            if report.ok
            else f"{len(report.pairs)} leaking pair(s), {len(report.embargo_breaches)} "
            "embargo breach(es)"
        )
    if not report.ok:
        raise Exit(code=1)


@task(
    positional=["src", "dst"],
    help={
        "src": "parquet whose features column holds pickled cells",
        "dst": "new parquet to write in the safe list form",
        "trust": "required: unpickling can run code, so confirm you trust the file's source",
    },
    dry="data.convert-pickled writes a new parquet; `invoke data.validate --path SRC` reads the "
    "source without writing",
)
@user_errors
def convert_pickled(c, src, dst, trust=False):
    """Convert a trusted labeled parquet with pickled features into the safe list form."""
    from moola_core.data.labeled import convert_pickled as convert

    path = convert(src, dst, trust=trust)
    print(f"wrote {path}")


data = Collection("data", market, validate, leakage, convert_pickled)
EXPORTS = [data]
