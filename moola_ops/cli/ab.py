"""`invoke ab`: compare the shadow (candidate) with the live release on the same requests."""

from __future__ import annotations

from moola_ops.cli._common import task, user_errors
from moola_ops.terminal import print_json


@task(
    help={
        "host": "the inventory host whose captures are compared",
        "since": "only requests since then: a duration (30m, 6h, 2d) or an ISO time "
        "(default: everything captured)",
        "outcomes": "labeled parquet with the true labels and spans, joined on window_id: "
        "adds accuracy and span IoU differences and the promote/keep decision",
        "candidate": "the shadow release to compare (default: the newest one captured)",
        "cache": "local folder for pulled captures (default .moola/captures)",
        "no_pull": "use only what is already in the local cache (no SSH)",
        "no_record": "do not write the result to the deployment log",
        "primary": "the metric the decision goes by: span_iou (default, as `invoke select`) or "
        "accuracy; the other must not regress (docs/ab.md)",
        "inventory": "inventory file (default inventory/hosts.yaml or env MOOLA_INVENTORY)",
        "json": "print one JSON document",
    },
    dry="ab pulls captures into the local cache and records its verdict; `invoke shadow status --host "
    "H` shows the shadow without writing anything",
)
@user_errors
def ab(
    c,
    host,
    since="",
    outcomes="",
    candidate="",
    cache="",
    no_pull=False,
    no_record=False,
    inventory="",
    json=False,
    primary="span_iou",
):
    """A/B on live traffic: agreement, span IoU, latency with CIs; promote, keep or wait."""
    from moola_ops.shadow.ab import render_text, run_ab

    result, pulled = run_ab(
        host,
        since=since,
        outcomes=outcomes or None,
        candidate=candidate or None,
        inventory_path=inventory or None,
        cache=cache or None,
        pull=not no_pull,
        record_result=not no_record,
        primary=primary,
    )
    if json:
        payload = result.to_dict()
        payload["pulled"] = pulled.summary() if pulled else None
        print_json(payload)
        return
    if pulled:
        print(f"pulled: {pulled.summary()}")
    print("\n".join(render_text(result)))


EXPORTS = [ab]
