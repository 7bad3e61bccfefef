"""Damaged data: truncated and corrupt tar shards, undecodable images, and empty, missing or unreadable
data folders. Every sample that can be read is still used; the rest is skipped, counted and named (or, in
strict mode, raises); the data position stays exact for resuming."""

from __future__ import annotations

import re
import shutil
import tarfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import TINY_TOKENIZER
from PIL import Image

from infinity_lit.data import ShardDataModule, ShardDataset, iter_samples, read_manifest
from infinity_lit.data.shards import (
    MANIFEST,
    SPLITS,
    DamagedShardError,
    ShardSetWriter,
    encode_png,
    make_manifest,
    raw_samples,
    split_shards,
    write_manifest,
)

#: The shards built here: 48 train samples in 6 shards, 16 val samples in 2, 32² pixels.
SHARD_SIZE, N_TRAIN, N_VAL, RESOLUTION = 8, 48, 16, 32
TRUNCATED, CORRUPT, VAL_TRUNCATED = "train-000001.tar", "train-000003.tar", "val-000001.tar"


def _key(name: str) -> str:
    return name.split(".", 1)[0]


def _build(out: Path) -> None:
    with ShardSetWriter(out, SHARD_SIZE) as writer:
        for i in range(N_TRAIN + N_VAL):
            split = "train" if i < N_TRAIN else "val"
            image = Image.new("RGB", (RESOLUTION, RESOLUTION), (i * 5 % 256, 255 - i * 3 % 256, i * 11 % 256))
            image.putpixel((i % RESOLUTION, 3), (0, 0, 0))
            writer.write(split, f"{split[0]}{i:03d}", encode_png(image), f"caption {i}", {"i": i})
    manifest = make_manifest(
        source="test",
        resolution=RESOLUTION,
        settings={},
        shards=writer.shards,
        skipped={},
        created_by="test_corrupt_shards",
    )
    write_manifest(out, manifest)


@pytest.fixture(scope="module")
def intact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("intact")
    _build(out)
    return out


def _members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return [m for m in tar.getmembers() if m.isreg()]


def _keys_in_order(data_dir: Path, split: str) -> list[str]:
    keys: list[str] = []
    for path, _ in split_shards(data_dir, split):
        keys += list(dict.fromkeys(_key(m.name) for m in _members(path)))
    return keys


def _truncate(path: Path) -> tuple[str, str, set[str]]:
    """Cut ``path`` in the middle of the data of the first PNG member after 60 % of the file.

    Returns:
        (name of the member cut, its key, keys of the samples lost: those with a member not wholly kept).
    """
    members = _members(path)
    size = path.stat().st_size
    member = next(m for m in members if m.name.endswith(".png") and m.offset_data >= 0.6 * size)
    cut = member.offset_data + member.size // 2
    with open(path, "r+b") as f:
        f.truncate(cut)
    return member.name, _key(member.name), {_key(m.name) for m in members if m.offset_data + m.size > cut}


def _corrupt_header(path: Path) -> tuple[range, str]:
    """Overwrite the mode/uid/gid/size fields of a tar header in the middle of ``path`` (the header just
    before the data of the middle member, a PNG).

    Returns:
        (the byte offsets of that member's headers, its key).
    """
    members = _members(path)
    member = [m for m in members if m.name.endswith(".png")][len(members) // 6]
    header = member.offset_data - tarfile.BLOCKSIZE
    with open(path, "r+b") as f:
        f.seek(header + 100)
        f.write(b"\xff" * 40)
    return range(member.offset, member.offset_data), _key(member.name)


@dataclass
class Damaged:
    """A damaged copy of the intact shards and what should come out of it."""

    data_dir: Path
    train_keys: list[str]  # the train samples that can be read, in shard order
    val_keys: list[str]
    lost_train: set[str]  # keys of the train samples lost
    lost_val: set[str]
    truncated_member: str  # member (and key) where reading the truncated shard fails
    truncated_key: str
    corrupt_headers: range  # byte offsets of the headers of the member whose header is corrupt, its key
    corrupt_key: str


@pytest.fixture
def damaged(intact: Path, tmp_path: Path) -> Damaged:
    data_dir = tmp_path / "damaged"
    shutil.copytree(intact, data_dir)
    member, key, lost_truncated = _truncate(data_dir / TRUNCATED)
    headers, corrupt_key = _corrupt_header(data_dir / CORRUPT)
    _, _, lost_val = _truncate(data_dir / VAL_TRUNCATED)
    lost_train = lost_truncated | {corrupt_key}
    train = [k for k in _keys_in_order(intact, "train") if k not in lost_train]
    val = [k for k in _keys_in_order(intact, "val") if k not in lost_val]
    return Damaged(data_dir, train, val, lost_train, lost_val, member, key, headers, corrupt_key)


@contextmanager
def _recorded() -> Iterator[list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        messages: list[str] = []
        yield messages
    messages += [str(w.message) for w in caught if not issubclass(w.category, ResourceWarning)]


def _damage_warnings(messages: list[str], shard: str) -> list[str]:
    return [m for m in messages if "damaged shard" in m and shard in m]


# ---------------------------------------------------------------- evaluation path (iter_samples)


def test_iter_samples_yields_exactly_the_readable_samples(damaged: Damaged) -> None:
    assert damaged.truncated_key in damaged.lost_train and len(damaged.lost_train) > 2
    with _recorded() as messages:
        keys = [key for key, _, _ in iter_samples(damaged.data_dir, "train")]
    # Everything before the damaged places, the samples after the corrupt header, the other shards: once
    # each, in shard order; nothing of the lost samples.
    assert keys == damaged.train_keys
    assert len(keys) == N_TRAIN - len(damaged.lost_train)

    (truncated,) = _damage_warnings(messages, TRUNCATED)
    assert f"member {damaged.truncated_member!r} (key {damaged.truncated_key!r})" in truncated
    lost_here = len(_shard_keys(TRUNCATED) & damaged.lost_train)
    assert "truncated" in truncated and f"skipping {lost_here} of its {SHARD_SIZE} samples" in truncated
    (corrupt,) = _damage_warnings(messages, CORRUPT)
    offset = re.search(r"unreadable tar header at byte offset (\d+)", corrupt)
    assert offset and int(offset[1]) in damaged.corrupt_headers and f"key {damaged.corrupt_key!r}" in corrupt
    assert "skipping 1 of its 8 samples" in corrupt


def _shard_keys(shard: str) -> set[str]:
    index = int(shard.split("-")[1].split(".")[0])
    prefix = shard[0]
    first = index * SHARD_SIZE + (0 if prefix == "t" else N_TRAIN)
    return {f"{prefix}{i:03d}" for i in range(first, first + SHARD_SIZE)}


def test_iter_samples_reports_every_lost_sample_to_its_caller(damaged: Damaged) -> None:
    unreadable: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # recorded, not warned
        keys = [key for key, _, _ in iter_samples(damaged.data_dir, "train", unreadable=unreadable)]
    assert keys == damaged.train_keys
    assert len(unreadable) == len(damaged.lost_train) == N_TRAIN - len(keys)
    assert f"{TRUNCATED}/{damaged.truncated_key}" in unreadable
    assert f"{CORRUPT}/{damaged.corrupt_key}" in unreadable
    assert all(reason.startswith("damaged shard: ") for reason in unreadable.values())


def test_strict_fails_at_the_first_damaged_shard(damaged: Damaged) -> None:
    keys: list[str] = []
    with pytest.raises(DamagedShardError, match=rf"{TRUNCATED}.*key '{damaged.truncated_key}'") as info:
        for key, _, _ in iter_samples(damaged.data_dir, "train", strict=True):
            keys.append(key)
    message = str(info.value)
    assert "infinity-lit data" in message and "strict=False" in message
    assert info.value.key == damaged.truncated_key and info.value.shard.endswith(TRUNCATED)
    # Read up to the damage: the first shard and the part of the truncated one before the member cut.
    assert keys == [k for k in damaged.train_keys if k < damaged.truncated_key]

    for train in (True, False):
        dataset = ShardDataset(damaged.data_dir, "train", RESOLUTION, 4, train=train, strict=True)
        with pytest.raises(DamagedShardError, match=r"train-00000[13]\.tar.*infinity-lit data"):
            list(dataset)


def test_strict_fails_on_an_undecodable_image(intact: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "bad_png"
    shutil.copytree(intact, data_dir)
    path = data_dir / "val-000000.tar"
    member = [m for m in _members(path) if m.name.endswith(".png")][2]
    with open(path, "r+b") as f:  # keep the tar sound, break the PNG inside
        f.seek(member.offset_data + 8)
        f.write(b"\x00" * 16)
    with pytest.raises(
        ValueError, match=rf"{_key(member.name)}.*val-000000\.tar.*infinity-lit data.*strict=False"
    ):
        list(iter_samples(data_dir, "val", strict=True))
    dm = ShardDataModule(data_dir, resolution=RESOLUTION, batch_size=4, num_workers=0, strict=True)
    with pytest.raises(ValueError, match=rf"{_key(member.name)}.*strict=False"):
        list(dm.val_dataloader())
    lenient = ShardDataModule(data_dir, resolution=RESOLUTION, batch_size=4, num_workers=0)
    with _recorded() as messages:
        keys = [k for b in lenient.val_dataloader() for k in b["key"]]
    assert keys == [k for k in _keys_in_order(intact, "val") if k != _key(member.name)]
    assert lenient.skipped_by_loader == {"val": 1}
    assert any(_key(member.name) in m and "val-000000.tar" in m for m in messages)


def test_damaged_placeholders_are_the_same_at_every_reading(damaged: Damaged) -> None:
    shards = split_shards(damaged.data_dir, "train")
    first = [s["__key__"] for s in raw_samples(shards)]
    assert first == [s["__key__"] for s in raw_samples(shards)]
    assert len(first) == N_TRAIN  # one raw item per sample of the manifest: the lost ones as placeholders


# ---------------------------------------------------------------- training path (ShardDataset / DataModule)


def test_dataset_in_order_fills_batches_and_counts(damaged: Damaged) -> None:
    dataset = ShardDataset(damaged.data_dir, "train", RESOLUTION, 5, train=False)
    with _recorded() as messages:
        batches = list(dataset)
    keys = [k for b in batches for k in b["key"]]
    assert keys == damaged.train_keys
    assert [len(b["key"]) for b in batches[:-1]] == [5] * (len(batches) - 1)  # full but the last
    assert all(b["image"].shape[0] == len(b["key"]) for b in batches)
    assert dataset.skipped_samples == len(damaged.lost_train)
    assert len(_damage_warnings(messages, TRUNCATED)) == len(_damage_warnings(messages, CORRUPT)) == 1


@pytest.mark.parametrize("num_workers", [0, 2])
def test_datamodule_train_batches_are_full_and_skips_are_counted(damaged: Damaged, num_workers: int) -> None:
    dm = ShardDataModule(
        damaged.data_dir, resolution=RESOLUTION, batch_size=4, num_workers=num_workers, shuffle_buffer=8
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    with _recorded():
        batches = list(loader)
    assert len(batches) == len(loader) == N_TRAIN // 4
    assert all(b["image"].shape == (4, 3, RESOLUTION, RESOLUTION) and len(b["key"]) == 4 for b in batches)
    keys = [k for b in batches for k in b["key"]]
    # The first pass over the readable samples is used up (the shortfall is made up from the next one).
    assert set(keys) == set(damaged.train_keys)
    assert dm.skipped_by_loader["train"] >= len(damaged.lost_train)

    with _recorded():
        val = [k for b in dm.val_dataloader() for k in b["key"]]
    assert sorted(val) == sorted(damaged.val_keys)  # each once (workers' batches interleave)
    assert dm.skipped_by_loader["val"] == len(damaged.lost_val) > 0
    assert dm.skipped_samples == dm.skipped_by_loader["train"] + dm.skipped_by_loader["val"]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_stays_exact_with_damaged_shards(damaged: Damaged, num_workers: int) -> None:
    from infinity_lit.data.datamodule import _EpochDataLoader

    def loader() -> _EpochDataLoader:
        dataset = ShardDataset(
            damaged.data_dir,
            "train",
            RESOLUTION,
            4,
            train=True,
            num_workers=num_workers,
            shuffle_buffer=8,
            seed=3,
        )
        return _EpochDataLoader(dataset, lambda passes: 0, num_workers=num_workers)

    with _recorded():
        straight = [b["key"] for b in loader()]
        first = loader()
        it = iter(first)
        head = [next(it)["key"] for _ in range(5)]
        state = first.state_dict()
        del it
        resumed = loader()
        resumed.load_state_dict(state)
        tail = [b["key"] for b in resumed]
    assert head + tail == straight


# ---------------------------------------------------------------- TensorBoard


def test_skip_count_reaches_tensorboard(damaged: Damaged, tmp_path: Path) -> None:
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from infinity_lit.tokenizer.module import TokenizerModule
    from infinity_lit.training.callbacks import SkippedSamplesText

    model = TokenizerModule(tokenizer=TINY_TOKENIZER, gan_weight=0.0, perceptual_weight=0.0, num_log_images=0)
    dm = ShardDataModule(damaged.data_dir, resolution=RESOLUTION, batch_size=8, num_workers=0)
    trainer = L.Trainer(
        callbacks=[SkippedSamplesText()],
        max_epochs=1,
        limit_train_batches=2,
        accelerator="cpu",
        logger=TensorBoardLogger(tmp_path, name="tb", version=0),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    with _recorded():
        trainer.fit(model, datamodule=dm)
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"))
    events.Reload()
    logged = [e.value for e in events.Scalars("data/skipped_samples")]
    assert logged and logged[-1] == dm.skipped_samples >= len(damaged.lost_val)
    # the names (SHARD/KEY) of skipped samples, as text: each one of the lost samples, in its shard
    names = [
        line
        for event in events.Tensors("data/skipped/text_summary")  # add_text's tag
        for text in event.tensor_proto.string_val
        for line in text.decode().split("  \n")
    ]
    assert names, "no skipped sample named in TensorBoard"
    lost = damaged.lost_train | damaged.lost_val
    shards, keys = zip(*(name.split("/", 1) for name in names))
    assert all(shard.endswith(".tar") for shard in shards), names
    # a lost sample's key, or, past the point where the shard is cut, "(unknown key …, at byte offset N)"
    assert all(key in lost or key.startswith("(unknown key") for key in keys) and set(keys) & lost, names


# ---------------------------------------------------------------- no usable data


@pytest.mark.parametrize("make", ["missing", "empty", "no_shards"])
def test_missing_or_empty_data_folder_says_how_to_build(tmp_path: Path, make: str) -> None:
    data_dir = tmp_path / "data"
    if make != "missing":
        data_dir.mkdir()
    if make == "no_shards":
        (data_dir / "notes.txt").write_text("not a shard")
    for attempt in (
        lambda: ShardDataModule(data_dir, resolution=RESOLUTION).setup("fit"),
        lambda: ShardDataModule(data_dir, resolution=RESOLUTION).train_dataloader(),
        lambda: ShardDataset(data_dir, "train", RESOLUTION, 4, train=True),
        lambda: list(iter_samples(data_dir, "val")),
    ):
        with pytest.raises(
            FileNotFoundError, match=r"infinity-lit data openmoji --out .*infinity-lit data folder"
        ):
            attempt()


def _ruin_all_shards(data_dir: Path) -> None:
    for split in SPLITS:
        for path in data_dir.glob(f"{split}-*.tar"):
            path.write_bytes(b"<html>not found</html>" * 50)


def test_all_shards_unreadable_is_a_clear_error(intact: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "ruined"
    shutil.copytree(intact, data_dir)
    _ruin_all_shards(data_dir)
    with _recorded():
        with pytest.raises(
            ValueError, match=r"no sample of the 'val' split .* can be read.*infinity-lit data"
        ):
            list(iter_samples(data_dir, "val"))
        dm = ShardDataModule(data_dir, resolution=RESOLUTION, batch_size=4, num_workers=0)
        with pytest.raises(
            ValueError, match=r"no sample of the 'train' split .* can be read.*infinity-lit data"
        ):
            list(dm.train_dataloader())
        with pytest.raises(
            ValueError, match=r"no sample of the 'val' split .* could be read.*infinity-lit data"
        ):
            list(dm.val_dataloader())
    assert dm.skipped_by_loader["val"] == N_VAL

    (data_dir / MANIFEST).unlink()  # without a manifest the shards are counted: none can be read
    with _recorded() as messages:
        with pytest.raises(ValueError, match=r"no sample of the shards .* can be read.*infinity-lit data"):
            read_manifest(data_dir)
    assert sum("damaged shard" in m and "not a tar file" in m for m in messages) == 8


def test_shards_without_manifest_count_what_can_be_read(damaged: Damaged) -> None:
    (damaged.data_dir / MANIFEST).unlink()
    with _recorded() as messages:
        counts = {s["name"]: s["count"] for s in read_manifest(damaged.data_dir)["splits"]["train"]["shards"]}
    assert counts[TRUNCATED] == len(_shard_keys(TRUNCATED) - damaged.lost_train)
    assert counts[CORRUPT] == SHARD_SIZE - 1
    assert sum(counts.values()) == len(damaged.train_keys)
    assert len(_damage_warnings(messages, TRUNCATED)) == len(_damage_warnings(messages, CORRUPT)) == 1
    with _recorded():
        assert [k for k, _, _ in iter_samples(damaged.data_dir, "train")] == damaged.train_keys


def test_sound_shards_take_the_plain_path(intact: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keys = [s["__key__"] for s in raw_samples(split_shards(intact, "train"))]
        batch = next(iter(ShardDataset(intact, "train", RESOLUTION, 4, train=False)))
    assert keys == _keys_in_order(intact, "train") and len(keys) == N_TRAIN
    assert batch["image"].dtype == torch.float32
