"""The report's labeling section: per review batch, what reviewers did with the pre-annotations
(accepted as-is, edited, rejected: the keeper rate), reviewer agreement and time per task.

It reads the figures `invoke label.status` / `invoke label.import` saved in the labeling
ledger (moola_ops/labeling/status.py), so the report never needs Label Studio running.
"""

from __future__ import annotations

import os

from moola_ops.report.page import Section, _esc, _figure, _table


def labeling_section(state: str | os.PathLike | None = None) -> Section:
    """The section; says in one line how to get figures when there are none yet."""
    from moola_ops.labeling.ledger import DEFAULT_STATE
    from moola_ops.labeling.status import COLUMNS, cell, saved_status

    section = Section("labeling", "Labeling: review batches and keeper rate")
    payload = saved_status(state if state is not None else DEFAULT_STATE)
    rows = (payload or {}).get("batches") or []
    if not rows:
        section.missing = "no review batch yet (`invoke label.export`, then `invoke label.status`)"
        return section
    _figure(
        section,
        "labeling",
        verdict_figure(rows, "labeling"),
        "Per review batch: tasks reviewers accepted as-is, edited or rejected, and those not "
        "done yet; the keeper rate is accepted / done.",
    )
    total = payload["total"]
    table_rows = [[cell(r, key) for key, _title in COLUMNS] for r in rows]
    table_rows.append(
        [cell({**total, "batch": "all", "seconds_per_task": None}, key) for key, _ in COLUMNS]
    )
    section.body.append(_table([title for _key, title in COLUMNS], table_rows))
    source = "live from Label Studio" if payload.get("live") else "from the labeling ledger"
    section.body.append(
        f"<p class='note'>{_esc(source)}, {_esc(payload.get('at', ''))}; agreement: share of "
        "tasks two reviewers answered alike</p>"
    )
    return section


def verdict_figure(rows: list[dict], salt: str) -> str:
    """Stacked bars per batch: accepted, edited, rejected, not done."""
    from moola_ops.report.figures import BAD, GOOD, MUTED, WARN, _plt, to_svg

    plt = _plt()
    names = [r["batch"] for r in rows]
    fig, ax = plt.subplots(figsize=(7.5, 0.5 + 0.45 * len(rows)))
    left = [0] * len(rows)
    parts = (
        ("accepted", GOOD),
        ("edited", WARN),
        ("rejected", BAD),
        ("not done", MUTED),
    )
    for name, colour in parts:
        values = [(r["tasks"] - r["done"]) if name == "not done" else r[name] for r in rows]
        ax.barh(names, values, left=left, color=colour, label=name, height=0.6)
        left = [a + b for a, b in zip(left, values, strict=True)]
    for i, r in enumerate(rows):
        if r.get("keeper_rate") is not None:
            ax.text(left[i], i, f"  keeper {100 * r['keeper_rate']:.0f}%", va="center")
    ax.set_xlabel("tasks")
    ax.invert_yaxis()
    ax.legend(loc="lower right", ncol=4, fontsize=8, frameon=False, bbox_to_anchor=(1, 1.02))
    return to_svg(fig, salt)
