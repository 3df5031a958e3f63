"""Fixtures of the emulator tier: a fresh API server per test with Kontinual's real kopf registry running."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.emulator.cluster import Cluster, running_cluster, running_operator


@pytest.fixture
async def api() -> AsyncIterator[Cluster]:
    """The emulated API server alone (no operator)."""
    async with running_cluster() as cluster:
        yield cluster


@pytest.fixture
async def cluster(api: Cluster, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    """The emulated API server with `kontinual.controller.handlers.registry` running cluster-wide in this loop."""
    # Settings.from_env() reads these at the operator's startup; the defaults would also do, the
    # pins keep the tier independent of the caller's environment.
    monkeypatch.setenv("KONTINUAL_SERVER_IMAGE", "kontinual/server:test")
    monkeypatch.setenv("KONTINUAL_TRAINER_IMAGE", "kontinual/trainer:test")
    monkeypatch.delenv("KONTINUAL_WATCH_NAMESPACES", raising=False)
    from kontinual.controller.handlers import registry

    async with running_operator(registry, api.kubeconfig):
        yield api
