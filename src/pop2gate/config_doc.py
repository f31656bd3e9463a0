"""docs/configuration.md, generated from the configuration models.

Each key's type, default and meaning come from its model field (`description=`), each
section's prose from its model's docstring: the models are the one source, and a test
fails when the file and this output differ. Regenerate with `make config-doc`
(`pop2gate config reference > docs/configuration.md`).
"""

from __future__ import annotations

import inspect
import types
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .config import Config, Limits, LogSettings, MetricsSettings, Routing, ServerSettings
from .config_show import toml_value
from .stores.base import BackendConfig
from .stores.registry import BACKENDS

INTRO = """\
# Configuration

<!-- Generated from the configuration models by `make config-doc`; edit the models, not this file. -->

`pop2gate serve -c FILE` reads one TOML file. Check it first with

    pop2gate config check -c FILE

which validates it exactly as `serve` does at start. A valid file: the effective
configuration (every default filled in, secrets masked) is printed as TOML on standard
output, and the status is 0. An invalid one: every error is printed, one a line, as
`pop2gate: config error: FILE:LINE: <key>: <reason>` (the line of the key, or of its table
when the key is missing), and the status is 2. `serve` prints the same lines and exits 2;
nothing listens until the whole file is valid. Whether the serving user can use each
store's files is checked by `serve` once it has become that user.

Secrets: a key that holds a password, a client secret or a token is printed as
`********` (a key so marked in its model, or one whose name is or ends in `password`,
`passphrase`, `secret` or `token`). Paths (such as `tls_key`) are printed as they are: a
path is not the key, and `config check` reads no file but the configuration.

Types: a *duration* is seconds (an integer or a decimal); an *address* is `HOST:PORT`, IPv6
as `[::1]:109`.
"""

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("[server]", ServerSettings), ("[limits]", Limits), ("[log]", LogSettings), ("[metrics]", MetricsSettings),
]

_BOUNDS = {annotated_types.Gt: ("gt", ">"), annotated_types.Ge: ("ge", "≥"), annotated_types.Lt: ("lt", "<"),
           annotated_types.Le: ("le", "≤")}
_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}


def _plural(word: str) -> str:
    return word + ("es" if word.endswith("s") else "s")


def _type_name(annotation: Any, key: str) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f'`"{a}"`' for a in args)
    if origin in (types.UnionType, typing.Union):
        kinds = [_type_name(a, key) for a in args if a is not type(None)]
        return " \\| ".join(kinds) + (", optional" if type(None) in args else "")
    if origin is list:
        return f"list of {_plural(_type_name(args[0], key))}"
    if origin is dict:
        return f"table of {_plural(_type_name(args[1], key))}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    if annotation is float and key.endswith(("timeout", "delay", "window", "linger")):
        return "duration"
    if annotation is str and key.endswith("listen"):
        return "address"  # HOST:PORT, checked by its validator
    return _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)).removeprefix("IPvAny").lower())


def _type(field: FieldInfo, key: str) -> str:
    text = _type_name(field.annotation, key)
    bounds = []
    for m in field.metadata:
        if type(m) in _BOUNDS:
            attr, sign = _BOUNDS[type(m)]
            bounds.append(f"{sign} {getattr(m, attr)}")
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def _default(field: FieldInfo) -> str:
    extra = field.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("doc_default"), str):
        return str(extra["doc_default"])
    if field.is_required():
        return "required"
    if field.default is None:
        return "unset"
    return f"`{toml_value(field.default)}`"


def _prose(model: type[BaseModel]) -> str:
    text = inspect.getdoc(model) or ""
    return "\n".join(" ".join(p.split()) for p in text.split("\n\n")).replace("\n", "\n\n")


def _table(model: type[BaseModel], skip: tuple[str, ...] = ()) -> list[str]:
    for name, field in model.model_fields.items():
        if not field.description and name not in skip:
            raise ValueError(f"{model.__name__}.{name} has no description")
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if name not in skip:
            meaning = (field.description or "").replace("|", "\\|")
            rows.append(f"| `{name}` | {_type(field, name)} | {_default(field)} | {meaning} |")
    return rows


def _subtables(model: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    """The keys of `model` that hold a table of their own (an IMAP backend's `oauth2`), with its model."""
    found = []
    for name, field in model.model_fields.items():
        for inner in (*typing.get_args(field.annotation), field.annotation):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                found.append((name, inner))
    return found


def reference() -> str:
    """The whole of docs/configuration.md."""
    out = [INTRO]
    for header, model in SECTIONS:
        out += [f"## `{header}`", "", _prose(model), "", *_table(model), ""]
    base = tuple(BackendConfig.model_fields)
    out += ["## `[[backend]]`", "",
            "One table per backend; the keys every type has:", "", *_table(BackendConfig), ""]
    for type_name, backend in BACKENDS.items():
        out += [f"### `type = \"{type_name}\"`", "", _prose(backend.model), "",
                *_table(backend.model, skip=base), ""]
        for key, inner in _subtables(backend.model):
            out += [f"#### `[backend.{key}]`", "", _prose(inner), "", *_table(inner), ""]
    out += ["## `[routing]`", "", _prose(Routing), "", *_table(Routing), ""]
    assert set(Config.model_fields) == {"server", "limits", "log", "metrics", "backend", "routing"}, \
        "a new section of Config needs its place in the reference"
    return "\n".join(out)
