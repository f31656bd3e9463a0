"""The `pop2gate` command line: the main group (base.py), and its commands by what they are for."""

from . import accounts, clients, server  # noqa: F401 - each registers its commands on `main`
from .base import main

__all__ = ["main"]
