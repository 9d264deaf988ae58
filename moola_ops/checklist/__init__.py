"""The eight-phase checklist: its spec, its states read from the deployment log, and the phases
that are not deploy itself (1 preflight, 2 select, 5 verify, 6 accept).

    load_checklist(path) -> Checklist                 checklists/deployment.yaml, validated
    checklist_states(checklist, events, deployment)   done / failed / pending / override, per step
    run_preflight / run_select / run_verify / run_accept -> PhaseReport

Modules: `spec` (the YAML's schema and which log step proves which check), `states` (states
from the log), `phases`, `preflight` (phase 1's checks), `doctor` (dependencies), `view` (how a
person reads them). docs/checklist.md is the user's page.
"""

from moola_ops.checklist.phases import (
    PhaseReport,
    run_accept,
    run_preflight,
    run_select,
    run_verify,
)
from moola_ops.checklist.spec import DEFAULT_CHECKLIST, load_checklist
from moola_ops.checklist.states import ChecklistReport, checklist_states

__all__ = [
    "DEFAULT_CHECKLIST",
    "ChecklistReport",
    "PhaseReport",
    "checklist_states",
    "load_checklist",
    "run_accept",
    "run_preflight",
    "run_select",
    "run_verify",
]
