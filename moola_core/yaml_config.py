"""YAML config files into pydantic models, with one sentence per mistake.

Shared by the training config (moola_core.train.config) and the pre-training config
(moola_core.pretrain.config): both are a mapping of sections, unknown keys are errors, and
command-line overrides are dotted keys like {"optim.max_epochs": 5}.
"""

from __future__ import annotations

from pathlib import Path

from moola_core.errors import MoolaError, os_error_sentence


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of the file `path`; MoolaError (one sentence) when it is a folder, cannot
    be read or is not UTF-8. `what` names the file in messages ("inventory")."""
    path = Path(path)
    if path.is_dir():
        raise MoolaError(f"{what} {path} is a folder, not a file: give the file itself.")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MoolaError(os_error_sentence(exc, f"read the {what}") + ".") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MoolaError(
            f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}): "
            "save it as UTF-8."
        ) from None


def read_mapping(path: str | Path, what: str, example: str) -> dict:
    """The mapping in the YAML file `path`; MoolaError when it is missing, invalid or no mapping.

    `what` names the file in messages ("training config"), `example` is the file to look at.
    """
    import yaml

    path = Path(path)
    if not path.exists():
        raise MoolaError(f"{what} {path} does not exist; pass --config PATH.")
    text = read_text(path, what)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MoolaError(f"{path} is not valid YAML ({exc.__class__.__name__}); fix it.") from None
    # An empty file means "all defaults"; `[]`, `0` or '' are mistakes, not empty mappings.
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise MoolaError(f"{path} must hold a mapping of sections; see {example}.")
    return raw


def set_dotted(raw: dict, dotted: str, value) -> None:
    """Set raw[a][b]... = value for the override key "a.b...", making sections as needed."""
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise MoolaError(f"override {dotted}: {part} is not a section; check the key.")
    node[leaf] = value


def first_problem(exc) -> str:
    """'where: what' of the first error in a pydantic ValidationError (one sentence's worth)."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return f"{where}: {first['msg']}"


def validate(model_cls, raw: dict | None, source: str):
    """`model_cls.model_validate(raw)`; MoolaError naming `source` and the first problem."""
    import pydantic

    try:
        return model_cls.model_validate(raw or {})
    except pydantic.ValidationError as exc:
        raise MoolaError(
            f"{source}: {first_problem(exc)} ({exc.error_count()} problem(s)); "
            "fix the value or remove the key."
        ) from None
