"""Brokers store tasks and hand them to workers; backends needing an extra live in submodules."""

from __future__ import annotations

from .base import AbstractBroker
from .memory import InMemoryBroker

__all__ = ["AbstractBroker", "InMemoryBroker"]
