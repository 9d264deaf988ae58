"""The model's input contract, defined once: window length, feature names and class labels.

Standard library only: the remote runtime imports this on hosts that have just Python and torch.
"""

WINDOW_LEN = 105

FEATURE_NAMES: tuple[str, ...] = (
    # candle (6)
    "open_norm",
    "close_norm",
    "body_pct",
    "upper_wick_pct",
    "lower_wick_pct",
    "range_z",
    # swing (4)
    "dist_to_prev_SH",
    "dist_to_prev_SL",
    "bars_since_SH_norm",
    "bars_since_SL_norm",
    # expansion (1)
    "expansion_proxy",
)
N_FEATURES = len(FEATURE_NAMES)

LABELS: tuple[str, ...] = ("consolidation", "retracement")
