"""Moola core: data, features, models, training, bundles and the remote runtime.

Importing this package is cheap on purpose: torch, numpy and pandas load only in the submodules
that need them, so `invoke --list` and the cron health check start fast.
"""

__version__ = "0.1.0"
