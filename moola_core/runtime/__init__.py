"""The remote runtime: `python -m moola_core.runtime check --release DIR --json` on a GPU host.

Standard library and torch only; see docs/runtime.md. The release folder is immutable once
verified, so the runtime does not write byte-code caches next to the code it ships with.
"""

import sys

sys.dont_write_bytecode = True
