"""The data layer: bars, the 11 causal features, labeled sets, windows, splits, synthetic and
real markets (docs/data.md, docs/features.md). Imports numpy and pandas; not host-side code."""
