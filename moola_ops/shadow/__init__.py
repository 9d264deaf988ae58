"""A candidate beside the live release: shadow traffic, the A/B on the same requests, promotion.

    start(host, candidate=...) / stop(host) / status(host) -> ShadowStatus
    run_ab(host, ...) -> ABResult          paired comparison with CIs and one decision
    promote(host, ...)                     the candidate goes live through deploy's own stages

Modules: `control` (start, stop, status, promote: the candidate is placed through the deploy
engine's verified, locked upload), `ab` (pairing and the comparison), `ab_rule` (the one
decision rule), `ab_stats` (bootstrap estimates). docs/ab.md is the user's page.
"""

from moola_ops.shadow.ab import ABResult, analyze, run_ab
from moola_ops.shadow.control import ShadowStatus, promote, start, status, stop

__all__ = ["ABResult", "ShadowStatus", "analyze", "promote", "run_ab", "start", "status", "stop"]
