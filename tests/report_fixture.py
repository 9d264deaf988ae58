"""Everything the report reads, made for real: two trained runs (tiny, on the synthetic labeled
set), a deployment log written through the journal, captured traffic in the local cache, and
the A/B and monitor results computed from it. Shared by the report tests and benchmarks/shadow.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

CANDIDATES = (
    {"name": "jade", "seed": 3, "model": {"hidden": 8, "layers": 1}},
    {"name": "jade-pe", "seed": 3, "model": {"hidden": 8, "layers": 1, "position_encoding": True}},
)


def make_report_inputs(root: Path, *, hosts=("local-1", "local-2"), n_requests: int = 300) -> dict:
    import yaml

    from moola_core.data import labeled, synthetic
    from moola_core.train import train_run
    from moola_core.train.config import load_config
    from moola_core.train.data import prepare_data
    from moola_ops.log.journal import Journal
    from moola_ops.serving.captures import add_local_file, load_table
    from moola_ops.shadow import ab
    from moola_ops.watch import monitor
    from tests.unit.capture_factory import ab_traffic, record, write_lines

    root = Path(root)
    runs_dir, cache, log = root / "runs", root / "cache", root / "deployments.jsonl"
    frame = synthetic.make_labeled_set(n_windows=174, seed=7)
    data_path = labeled.write_labeled(frame, root / "labeled.parquet")
    prepared, run_ids = None, []
    for i, candidate in enumerate(CANDIDATES):
        config = {
            **candidate,
            "optim": {"max_epochs": 3, "patience": 3},
            "split": {"folds": 3},
            "data": {"source": "file", "path": str(data_path)},
        }
        path = root / f"train-{i}.yaml"
        path.write_text(yaml.safe_dump(config))
        prepared = prepared or prepare_data(load_config(str(path)))
        run_ids.append(
            train_run(str(path), runs_dir, progress="none", n_boot=100, data=prepared).run_id
        )
    (runs_dir / "selected.json").write_text(json.dumps({"run_id": run_ids[0]}))

    old = os.environ.get("MOOLA_LOG")
    os.environ["MOOLA_LOG"] = str(log)
    try:
        deploy = Journal("deploy", bundle="v0.1")
        for host in hosts:
            for step in ("connect", "promote", "check", "switch", "post-check"):
                deploy.record(host, step, "ok", duration_s=0.2)
        for host in hosts:
            for i, p99 in enumerate((3.1, 3.4, 2.9)):
                Journal("healthcheck").record(
                    host,
                    "deep" if i % 2 else "fast",
                    "ok",
                    state="OK",
                    p99_ms=p99 if i % 2 else None,
                )
        rollback = Journal("rollback", bundle="v0.1")
        rollback.record(hosts[-1], "switch", "ok")
        # traffic: live v0.1 and shadow v0.2 on the first host, live only on the others
        for k, host in enumerate(hosts):
            records = ab_traffic(frame, n_requests, seed=k, live_acc=0.6, shadow_acc=0.9)
            if k:
                records = [r for r in records if r["role"] == "live"]
            records.append(
                record("e1", 0, release="v0.1", role="live", time=records[-1]["time"], status=500)
            )
            raw = write_lines(root / "raw" / host / "20261127T170000Z-1.jsonl", records)
            add_local_file(cache, host, "v0.1", raw)
        reference = monitor.reference_from_labeled(frame)
        table = load_table(cache, hosts[0], with_ohlc=True)
        result = ab.analyze(table, frame)
        ab.record(result, hosts[0])
        (cache / hosts[0] / "ab.json").write_text(json.dumps(result.to_dict()))
        for host in hosts:
            table = load_table(cache, host, with_ohlc=True)
            monitor.save(monitor.monitor(table, reference, host=host, sla_p99_ms=50.0), cache)
    finally:
        if old is None:
            os.environ.pop("MOOLA_LOG", None)
        else:
            os.environ["MOOLA_LOG"] = old
    return {
        "runs_dir": runs_dir,
        "cache": cache,
        "log": log,
        "hosts": list(hosts),
        "deployment": deploy.deployment,
        "run_ids": run_ids,
        "labeled": data_path,
    }
