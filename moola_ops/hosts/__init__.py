"""The hosts Moola deploys to: who they are, how to reach them, where things live on them.

    load_inventory(path) -> Inventory     inventory/hosts.yaml, validated (docs/inventory.md)
    Host, Inventory                       one host's settings; the set, with groups and globs
    Layout(workspace), check_name         the remote layout; names allowed into a path
    start_sandbox(root, names) -> Sandbox stand-in hosts: real sshd on 127.0.0.1

Modules: `inventory` + `inventory_schema` (the file and its schema), `layout` (the remote
layout, defined once), `hostkeys` (pinning host keys), `runpod/` (pods by id over RunPod's API),
`standin` + `standin_sshd` (the local stand-in hosts that tests and the demo use).
"""

from moola_ops.hosts.inventory import Host, Inventory, load_inventory
from moola_ops.hosts.layout import Layout, check_name
from moola_ops.hosts.standin import Sandbox, start_sandbox

__all__ = [
    "Host",
    "Inventory",
    "Layout",
    "Sandbox",
    "check_name",
    "load_inventory",
    "start_sandbox",
]
