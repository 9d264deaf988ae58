"""The remote runtime: `python -m moola_core.runtime check --release DIR --json` on a GPU host.

Standard library and torch only; see docs/runtime.md.
"""
