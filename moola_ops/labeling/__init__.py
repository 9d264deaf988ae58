"""Reviewing labels in Label Studio and merging them back: the learning loop's human step.

    export_batch(client, labeled=, hosts=, ...) -> ExportResult   windows -> Label Studio tasks
    import_batch(client, batch_id, base=, out=) -> ImportResult   annotations -> a NEW labeled set
    label_status(client=None) -> dict                              keeper rate, agreement, pace
    start_studio(data_dir) -> LocalStudio / stop_process(pid, dir) a local Label Studio
    connect(url, token) -> LabelStudio                             its REST API (standard library)

Modules: `studio` (the REST client), `server` (a local instance), `tasks` (labeling config,
task and annotation formats), `windows` (sources, order, overlap), `preannotate` (the selected
run's answers), `ledger` (.moola/labeling: batches and imports), `export`, `review` (verdicts,
agreement), `merge` (the import), `status`, `holdout` (the reviewed windows a gate may use).
docs/labeling.md is the user's page. Light at import: numpy, pandas and torch load inside.
"""

from moola_ops.labeling.export import ExportResult, export_batch
from moola_ops.labeling.merge import ImportResult, import_batch
from moola_ops.labeling.server import LocalStudio, connect, start_studio, stop_process
from moola_ops.labeling.status import label_status, saved_status
from moola_ops.labeling.studio import LabelStudio, LabelStudioError

__all__ = [
    "ExportResult",
    "ImportResult",
    "LabelStudio",
    "LabelStudioError",
    "LocalStudio",
    "connect",
    "export_batch",
    "import_batch",
    "label_status",
    "saved_status",
    "start_studio",
    "stop_process",
]
