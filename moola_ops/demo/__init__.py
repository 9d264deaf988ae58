"""`invoke demo`: the whole checklist end to end on local stand-in hosts, every stage checked.

    run_demo(root, keep=False) -> DemoRun

Modules: `walk` (the stages, in order), `shadow_ab` (v0.2 as a shadow, traffic with known
outcomes, the A/B, promotion), `label_loop` (Label Studio review, import, retrain).
docs/demo.md is the user's page.
"""

from moola_ops.demo.walk import DemoRun, run_demo

__all__ = ["DemoRun", "run_demo"]
