"""Joining built commands into one round trip (Kamal's `combine` and `chain`)."""

from __future__ import annotations


def combine(*commands: str) -> str:
    """Run each command in turn whatever the one before did (`;`): for reads and reports."""
    return "; ".join(c for c in commands if c)


def chain(*commands: str) -> str:
    """Run each command only if the one before succeeded (`&&`)."""
    return " && ".join(f"{{ {c}; }}" for c in commands if c)
