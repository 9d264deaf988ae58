"""One finding of a validation: where (row, column) and what. Shared by bars and labeled sets."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from moola_core.errors import ValidationError


@dataclass(frozen=True)
class Problem:
    """A validation finding; `row` is the 0-based row position (None: the whole table)."""

    row: int | None
    column: str | None
    message: str
    severity: str = "error"  # "error" fails validation; "warning" is reported only

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column}")
        prefix = ", ".join(where) or "table"
        tag = "" if self.severity == "error" else f" [{self.severity}]"
        return f"{prefix}: {self.message}{tag}"

    def to_dict(self) -> dict:
        """JSON-able form for --json output."""
        return asdict(self)


def errors_only(problems: list[Problem]) -> list[Problem]:
    """The findings that fail validation (warnings dropped)."""
    return [p for p in problems if p.severity == "error"]


def summarize(problems: list[Problem], what: str, limit: int = 20) -> str:
    """One sentence naming the first problems, for a ValidationError message."""
    errors = errors_only(problems)
    shown = "; ".join(str(p) for p in errors[:limit])
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return f"{what} failed validation with {len(errors)} problem(s): {shown}{more}."


def raise_if_errors(problems: list[Problem], what: str) -> None:
    """Raise ValidationError (summary sentence + every finding) when any finding is an error."""
    if errors_only(problems):
        raise ValidationError(summarize(problems, what), problems)
