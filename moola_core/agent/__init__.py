"""The host agent: every program Moola runs on a host, in one folder, on one Python floor.

Python floor: 3.10, standard library only (stated here once; tests/unit/test_agent.py parses
every module of this package with that grammar and imports them with numpy, pandas, pydantic,
yaml and torch blocked). A host needs nothing installed but a python3.

One entry point, `python3 agent.py ACTION ...`, each action printing one JSON document on
stdout (`main.py` lists the actions). The workstation uploads this package once per host, into
WORKSPACE/.moola/agent/<content hash>/ (`moola_ops/transport/agent.py`), and every later command
runs it from there; no program source travels with commands. The same package also ships inside
every bundle's code/ (the model server's HTTP front is `http.py`), so a pod's start command can
run it from the current release after a restart.

    release.py   promote, verify and restore releases/ (archive.py: safe extraction, checksums)
    control.py   the model servers, the front proxy, the supervisor, and the one writer of
                 serve/state.json
    proxy.py     the front proxy on the public port
    http.py      the one HTTP/1.1 front (model server and proxy)
    facts.py     what the engine asks before it changes anything (the python and torch probe)
    captures.py  the listing of captured requests a pull reads
    main.py      the dispatcher; __main__.py the launcher (uploaded as agent.py)
"""
