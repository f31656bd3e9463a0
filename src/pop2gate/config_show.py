"""The effective configuration as TOML, every default filled in and every secret masked.

A secret is a key whose value gives access to something: a password, a client secret, a
token. A key whose name is or ends in "password", "passphrase", "secret" or "token"
(`client_secret`) is one, whatever its model says; its value is shown as MASK. Paths to key
files (`tls_key`) are shown: a path is not the key, and this module never reads a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from .config import Config

MASK = "********"
_SECRET_WORDS = {"password", "passphrase", "secret", "token"}


def is_secret(name: str) -> bool:
    return name.lower().rpartition("_")[2] in _SECRET_WORDS


@dataclass(frozen=True)
class Unset:
    """A key left unset; `means` says what that means, where its model says (`doc_default`)."""

    means: str = ""


def masked(model: BaseModel) -> dict[str, Any]:
    """`model` as JSON-like data, secrets replaced by MASK (nested models and lists of them too),
    unset keys by Unset."""
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if value is None:
            extra = field.json_schema_extra
            means = extra.get("doc_default") if isinstance(extra, dict) else None
            out[name] = Unset(means if isinstance(means, str) else "")
        elif is_secret(name):
            out[name] = MASK
        elif isinstance(value, BaseModel):
            out[name] = masked(value)
        elif isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
            out[name] = [masked(v) for v in value]
        else:
            out[name] = model.__pydantic_serializer__.to_python(model, mode="json", include={name})[name]
    return out


def toml_string(text: str) -> str:
    """`text` as a TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _key(name: str) -> str:
    return name if name and all(c.isascii() and (c.isalnum() or c in "_-") for c in name) else toml_string(name)


def toml_value(v: Any) -> str:
    """A TOML value: scalars, arrays, inline tables."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    assert isinstance(v, dict)
    if not v:
        return "{}"
    return "{ " + ", ".join(f"{_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"


def _table(header: str, data: dict[str, Any]) -> list[str]:
    lines = [header]
    subtables = []
    for name, v in data.items():
        if isinstance(v, Unset):
            lines.append(f"# {_key(name)} is unset" + (f": {v.means}" if v.means else ""))
        elif isinstance(v, dict) and v:
            subtables.append((name, v))
        else:
            lines.append(f"{_key(name)} = {toml_value(v)}")
    for name, v in subtables:
        inner = header.strip("[]")
        lines += ["", *_table(f"[{inner}.{_key(name)}]", v)]
    return lines


def effective_toml(config: Config) -> str:
    """The whole configuration in force, as a TOML document that loads back to the same values."""
    data = masked(config)
    lines: list[str] = []
    for section, value in data.items():
        if isinstance(value, list):
            for item in value:
                lines += [*_table(f"[[{section}]]", item), ""]
        else:
            lines += [*_table(f"[{section}]", value), ""]
    return "\n".join(lines)
