"""The checklist and a phase's report as a person reads them: a table on a terminal, plain lines
otherwise (`invoke checklist`, the phase tasks, the demo)."""

from __future__ import annotations

from moola_ops.terminal import console, is_tty

MARKS = {
    "done": "✔",
    "failed": "✘",
    "pending": "·",
    "skipped": "–",
    "ok": "✔",
    "not needed": "–",
    "overridden": "!",  # shipped past a failed or missing check by a named person: never a ✔
}
COLOURS = {
    "overridden": "magenta",
    "done": "green",
    "ok": "green",
    "failed": "red",
    "pending": "yellow",
    "skipped": "dim",
    "refused": "red",
    "aborted": "red",
    "not needed": "dim",
}


def _short_time(iso: str) -> str:
    return iso.replace("T", " ")[:19] if iso else ""


def render_checklist(report, checklist) -> None:
    """Print every phase and step with its state, who and when (rich on a TTY, else plain)."""
    phases = report.phase_states()
    head = f"deployment {report.deployment or '(none yet)'}"
    if report.bundle:
        head += f"  bundle {report.bundle}  hosts {', '.join(report.hosts)}"
    if is_tty():
        from rich.table import Table

        table = Table(title=head, show_lines=False)
        table.add_column("#", no_wrap=True)
        table.add_column("step", ratio=3)
        table.add_column("state", no_wrap=True)
        table.add_column("by", no_wrap=True)
        table.add_column("when", no_wrap=True)
        table.add_column("detail", ratio=2)
        for phase in checklist.phases:
            state = phases[phase.number]
            table.add_row(
                str(phase.number),
                f"[bold]{phase.name}[/]  [dim]{phase.task}[/]",
                f"[{COLOURS[state]}]{state}[/]",
                "",
                "",
                "",
            )
            for s in (s for s in report.steps if s.phase == phase.number):
                manual = " [dim](manual)[/]" if s.manual else ""
                hosts = " ".join(f"{h}:{st}" for h, st in sorted(s.hosts.items()))
                detail = " ".join(filter(None, [hosts, s.detail]))
                detail = detail[:80] + ("..." if len(detail) > 80 else "")
                table.add_row(
                    "",
                    f"{s.title}{manual}",
                    f"[{COLOURS[s.state]}]{s.state}[/]",
                    s.by,
                    _short_time(s.at)[5:16],
                    detail,
                    end_section=False,
                )
        console().print(table)
        return
    print(head)
    for phase in checklist.phases:
        print(f"{phase.number} {phase.name} [{phases[phase.number]}]  ({phase.task})")
        for s in (s for s in report.steps if s.phase == phase.number):
            who = f"  {s.by} {_short_time(s.at)}" if s.by else ""
            hosts = (
                "  " + " ".join(f"{h}:{st}" for h, st in sorted(s.hosts.items())) if s.hosts else ""
            )
            detail = f"  {s.detail[:110]}{'...' if len(s.detail) > 110 else ''}" if s.detail else ""
            manual = " (manual)" if s.manual else ""
            line = f"  {MARKS[s.state]} {s.state:<8} {s.step:<14}{manual}{who}{hosts}{detail}"
            print(line.rstrip())


def render_phase(report) -> None:
    """Print a phase report: one row per step, then an overall verdict."""
    if is_tty():
        from rich.table import Table

        table = Table(
            title=f"{report.phase} ({report.deployment})" if report.deployment else report.phase
        )
        for col in ("step", "status", "seconds", "summary"):
            table.add_column(col)
        for s in report.steps:
            colour = COLOURS.get(s.status, "white")
            table.add_row(s.step, f"[{colour}]{s.status}[/]", f"{s.duration_s:.1f}", s.summary)
        console().print(table)
    else:
        for s in report.steps:
            print(f"{s.status:<8} {s.step:<18} {s.duration_s:6.1f}s  {s.summary}")
    overridden = [s.step for s in report.steps if s.status == "overridden"]
    if report.ok and overridden:
        verdict = f"OVERRIDDEN ({', '.join(overridden)}: a person's reason is in the log)"
    else:
        verdict = "passed" if report.ok else "FAILED"
    print(f"{report.phase}: {verdict}")
