"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

# ---------------------------------------------------------------- data

#: Settings of the small real OpenMoji build shared by the tests: 64 emoji spread over the set, 32² pixels,
#: a quarter in validation and 8 samples per shard, so both splits have several shards.
OPENMOJI_TEST_BUILD = {"resolution": 32, "limit": 64, "val_fraction": 0.25, "shard_size": 8}


@pytest.fixture(scope="session")
def openmoji_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of real OpenMoji webdataset shards (``OPENMOJI_TEST_BUILD``), built once per session."""
    from infinity_lit.data import build_openmoji_shards

    out = tmp_path_factory.mktemp("openmoji32")
    build_openmoji_shards(out, progress=False, **OPENMOJI_TEST_BUILD)
    return out
