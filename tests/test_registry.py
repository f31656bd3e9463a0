"""Backend types (pop2gate.stores.registry) and building the stores (pop2gate.stores.open_stores)."""

from __future__ import annotations

from typing import get_args

import pytest

from pop2gate.config import Limits, parse_config
from pop2gate.stores import open_stores, registry
from pop2gate.stores.base import MailStore
from pop2gate.stores.imap import ImapBackend, ImapStore
from pop2gate.stores.maildir import MaildirBackend, MaildirStore
from pop2gate.stores.registry import BACKENDS, BackendType, StoreOptions

IMAP = {"name": "i", "type": "imap", "url": "imaps://127.0.0.1"}
MAILDIR = {"name": "m", "type": "maildir", "path": "/nonexistent", "users_file": "/nonexistent/users"}


def config(*backends: dict, uw_compat: bool = False):
    return parse_config({"server": {"uw_compat": uw_compat}, "backend": list(backends),
                         "routing": {"default": backends[0]["name"]}})


@pytest.fixture
async def opened():
    made: list[dict[str, MailStore]] = []

    def open_(cfg) -> dict[str, MailStore]:
        made.append(open_stores(cfg))
        return made[-1]

    yield open_
    for stores in made:
        for store in stores.values():
            await store.aclose()


def test_each_entry_is_named_as_its_model_says():
    assert list(BACKENDS) == ["maildir", "imap"]
    for name, kind in BACKENDS.items():
        assert get_args(kind.model.model_fields["type"].annotation) == (name,)
        assert kind.model.model_config.get("extra") == "forbid" and kind.model.model_config.get("frozen")


async def test_open_stores_builds_each_type(opened):
    stores = opened(config(IMAP, MAILDIR))
    assert isinstance(stores["i"], ImapStore) and isinstance(stores["m"], MaildirStore)
    assert [s.name for s in stores.values()] == ["i", "m"]


@pytest.mark.parametrize("uw", [False, True])
async def test_stores_get_uw_compat(opened, uw):
    stores = opened(config(IMAP, MAILDIR, uw_compat=uw))
    for store in stores.values():
        assert isinstance(store, (ImapStore, MaildirStore))
        assert store.form.uw_compat is uw


async def test_an_opener_runs_once_per_type_and_only_when_used(opened, monkeypatch):
    calls: list[StoreOptions] = []

    def counting(options: StoreOptions):
        calls.append(options)

        def open_one(backend: ImapBackend) -> MailStore:
            return ImapStore(backend, options.limits)

        return open_one

    monkeypatch.setitem(registry.BACKENDS, "imap", BackendType.of(ImapBackend, counting))
    opened(config(MAILDIR))
    assert calls == []
    cfg = config(IMAP, MAILDIR, {**IMAP, "name": "j"}, uw_compat=True)
    stores = opened(cfg)
    assert calls == [StoreOptions(cfg.limits, uw_compat=True)]
    assert isinstance(stores["j"], ImapStore)


def test_an_opener_takes_its_own_type_only():
    opener = BACKENDS["imap"].opener(StoreOptions(Limits()))
    with pytest.raises(TypeError, match="ImapBackend expected, got MaildirBackend"):
        opener(MaildirBackend(name="m", type="maildir", path="/x", users_file="/y"))
