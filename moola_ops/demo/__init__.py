"""`invoke demo`: the whole checklist end to end on local stand-in hosts, every stage checked.

    moola_ops.demo.walk.run_demo(root=DEMO_ROOT, keep=False) -> DemoRun

This package's face is light on purpose (`invoke --list` reads DEMO_ROOT for the task's help
and must not import serving, transport and the host agent to do it).

Modules: `walk` (the stages, in order), `shadow_ab` (v0.2 as a shadow, traffic with known
outcomes, the A/B, promotion), `label_loop` (Label Studio review, import, retrain).
docs/demo.md is the user's page.
"""

DEMO_ROOT = ".moola/demo"  # where the demo writes everything (wiped at its start)
