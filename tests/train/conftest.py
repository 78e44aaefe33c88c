"""Fixtures of the training tests (helpers in train_helpers.py)."""

from __future__ import annotations

import pytest
import torch

from train_helpers import SPECIES, write_synthetic


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the tiny models train faster so on small CPUs, and results do not depend on the machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("synthetic") / "shards")


@pytest.fixture(scope="session")
def species_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("species") / "species.csv"
    lines = ["level0,level1_family,level2_genus,level3_species,Category"]
    lines += [",".join(row) for row in SPECIES]
    path.write_text("\n".join(lines) + "\n")
    return path
