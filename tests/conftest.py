"""Shared fixtures. The demo world for tests is a small one built once per session into a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A small demo world (same generator as the default, smaller extent) shared by pipeline tests."""
    from treemap.demo import WorldSpec, build_world

    spec = WorldSpec(seed=7, x_min=497000.0, y_max=5543000.0, width_px=200, height_px=120, overlap_px=40)
    return build_world(tmp_path_factory.mktemp("world") / "w", spec)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's cache: the default demo world lives under a session temp folder."""
    cache = os.environ.get("TREEMAP_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "cache")
    monkeypatch.setenv("TREEMAP_CACHE", cache)
