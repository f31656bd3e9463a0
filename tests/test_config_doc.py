"""docs/configuration.md is generated from the configuration models and cannot drift from them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from helpers import BIN
from pop2gate.config import Config, Limits
from pop2gate.config_doc import _table, reference
from pop2gate.stores.registry import BACKENDS

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_the_doc_is_the_generated_reference():
    assert DOC.read_text() == reference(), "docs/configuration.md differs from the models: run `make config-doc`"


def test_the_command_prints_the_reference():
    result = subprocess.run([str(BIN / "pop2gate"), "config", "reference"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0 and result.stdout == reference()


def _models(model: type[BaseModel]):
    yield model
    for field in model.model_fields.values():
        for inner in getattr(field.annotation, "__args__", ()) + (field.annotation,):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                yield from _models(inner)


def test_every_key_of_every_section_and_backend_has_a_row():
    text = reference()
    models = [*_models(Config), *(t.model for t in BACKENDS.values())]
    keys = {name for m in models if m is not Config for name in m.model_fields}
    for name in keys:
        assert f"| `{name}` |" in text, name
    assert "| `login_timeout` | duration (> 0) | `180` |" in text
    assert "| `retr_chunk_size` | integer (≥ 1024, ≤ 16777216) | `65536` |" in text
    assert "| `url` | string | required |" in text
    assert "| `hostname` | string | the machine's name |" in text  # not this machine's name
    assert Limits.model_fields["login_timeout"].description in text


def test_a_key_without_a_description_is_refused():
    class Undocumented(BaseModel):
        fine: int = Field(1, description="Documented.")
        bare: int = 2

    with pytest.raises(ValueError, match="Undocumented.bare has no description"):
        _table(Undocumented)
