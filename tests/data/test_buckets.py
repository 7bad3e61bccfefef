"""Aspect-ratio buckets: template sizes, the folder builder, and batching by bucket (epochs, ranks, resume)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import BUCKET_SHAPES as SHAPES
from PIL import Image

from infinity_lit.data import ShardDataModule
from infinity_lit.data.datamodule import BucketedShardDataset, _EpochDataLoader
from infinity_lit.data.folder import nearest_bucket, template_buckets
from infinity_lit.data.shards import read_manifest, resize_cover_crop


def test_template_bucket_sizes_follow_the_method_templates() -> None:
    # 64 px at stride 8: an 8×8 latent, 5 scales; the 5th grid of the 2.0 template is (10, 5), of 0.5 (5, 10).
    assert template_buckets("0.5,1,2", 64, 8) == [(0.5, (40, 80)), (1.0, (64, 64)), (2.0, (80, 40))]
    # 256 px at stride 16: 7 scales, the 0.5 template ends at (11, 22) (176×352), 4/3 at (20, 15).
    assert template_buckets([0.5, 4 / 3], 256, 16) == [(0.5, (176, 352)), (1.333, (320, 240))]
    assert len(template_buckets("all", 256, 16)) == 15
    # With 3 scales the 4/7 template is still square (3×3): no bucket of its shape, and a way out named.
    with pytest.raises(
        ValueError,
        match=r"aspect ratio 0\.571 has no bucket of its own shape at resolution 32 / "
        r"stride 8 \(3 scales\): the method's template ends at 3×3 there .* a resolution of 48 or more",
    ):
        template_buckets("all", 32, 8)
    with pytest.raises(ValueError, match=r"aspect ratio 0\.5 has no bucket .* 2×2 there"):
        template_buckets([0.5, 1, 2], 16, 8)
    assert [size for _, size in template_buckets([0.5, 1, 2], 32, 8)] == [(16, 32), (32, 32), (32, 16)]
    with pytest.raises(ValueError, match=r"no scale schedule template for h/w = 1\.1"):
        template_buckets("1,1.1", 64, 8)
    with pytest.raises(ValueError, match="given twice"):
        template_buckets("2,2.0", 64, 8)
    with pytest.raises(ValueError, match="side of the method's square schedule"):
        template_buckets("1", 80, 8)  # a 10×10 latent: no template ends there
    with pytest.raises(ValueError, match="'all' or numbers"):
        template_buckets("wide", 64, 8)


def test_nearest_bucket_and_cover_crop() -> None:
    buckets = template_buckets("0.5,1,2", 32, 8)
    for (w, h), name in SHAPES.items():
        assert f"{nearest_bucket(buckets, h, w)[0]:g}" == name
    # Exact ties go where the quantizer's template lookup sends them (the reference's table order), not to
    # the smaller ratio: h/w 0.75 (between 0.5 and 1) → 1, 1.5 (between 1 and 2) → 1.
    from infinity_lit.quantizer.schedules import nearest_aspect_ratio

    assert nearest_bucket(buckets, 30, 40)[0] == 1.0 and nearest_bucket(buckets, 60, 40)[0] == 1.0
    every = template_buckets("all", 64, 8)
    for h, w in [(45, 50), (9, 20), (90, 100), (225, 100), (31, 40)]:  # 0.9, 0.45, 0.9, 2.25, 0.775: ties
        assert nearest_bucket(every, h, w)[0] == nearest_aspect_ratio(h / w), (h, w)
    # Cover-crop keeps the centre: a 100×40 (w×h) image into 16×32 (h×w) is scaled by 0.4 to 40×16, then
    # cropped by 4 px on each side.
    arr = np.zeros((40, 100, 3), dtype=np.uint8)
    arr[:, 50:] = 255
    out = resize_cover_crop(Image.fromarray(arr), (16, 32))
    assert out.size == (32, 16)
    row = np.asarray(out)[8, :, 0]
    assert row[:14].max() < 40 and row[18:].min() > 215  # the edge stays at the centre


@pytest.fixture(scope="module")
def bucketed(bucketed_shards) -> tuple[Path, dict[str, str]]:
    return bucketed_shards


def test_folder_builder_keeps_aspect_ratios_in_buckets(bucketed) -> None:
    import tarfile

    data, expected = bucketed
    manifest = read_manifest(data)
    buckets = manifest["buckets"]
    assert {n: b["size"] for n, b in buckets.items()} == {"0.5": [16, 32], "1": [32, 32], "2": [32, 16]}
    for split in ("train", "val"):
        assert sum(b["counts"][split] for b in buckets.values()) == manifest["counts"][split]
    seen: Counter[str] = Counter()
    for split in ("train", "val"):
        for shard in manifest["splits"][split]["shards"]:
            with tarfile.open(data / shard["name"]) as tar:
                metas = [
                    json.loads(tar.extractfile(m).read())
                    for m in tar.getmembers()
                    if m.name.endswith(".json")
                ]
                pngs = [Image.open(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".png")]
            assert len(metas) == shard["count"] <= 5
            # one bucket per shard, every image at its bucket's size, in the bucket the shape belongs to
            assert {m["bucket"] for m in metas} == {shard["bucket"]}
            h, w = buckets[shard["bucket"]]["size"]
            assert {im.size for im in pngs} == {(w, h)}
            for meta in metas:
                key = Path(meta["path"]).stem
                assert expected[key] == shard["bucket"]
                seen[key] += 1
    assert seen == Counter(expected.keys())  # every image once
    assert manifest["created_by"].endswith("--aspect_ratios 0.5,1,2 --stride 8")
    assert (data / "preview.png").is_file()


def _dataset(
    data: Path, split: str, *, train: bool, rank: int = 0, world: int = 1, workers: int = 0, bs: int = 2
):
    return BucketedShardDataset(
        data,
        split,
        32,
        bs,
        train=train,
        rank=rank,
        world_size=world,
        num_workers=workers,
        shuffle_buffer=4,
        seed=1,
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_training_batches_hold_one_bucket_and_each_sample_at_most_once(bucketed, workers: int) -> None:
    data, expected = bucketed
    manifest = read_manifest(data)
    loader = _EpochDataLoader(
        _dataset(data, "train", train=True, workers=workers), lambda p: 0, num_workers=workers
    )
    batches = list(loader)
    assert len(batches) == len(loader)
    keys = [k for b in batches for k in b["key"]]
    assert len(keys) == len(set(keys))  # no sample twice in an epoch
    shapes = Counter()
    for batch in batches:
        buckets = {expected[k] for k in batch["key"]}
        assert len(buckets) == 1  # one bucket per batch, at its size
        (bucket,) = buckets
        assert list(batch["image"].shape[2:]) == manifest["buckets"][bucket]["size"]
        shapes[bucket] += len(batch["key"])
    # Per bucket and worker ⌊n / N⌋ samples in full batches: all but fewer than a batch per worker are seen.
    n = max(1, workers)
    for name, info in manifest["buckets"].items():
        count = info["counts"]["train"]
        assert shapes[name] == n * ((count // n) // 2 * 2)
    assert len(shapes) == 3
    # The bucket order changes with the epoch, the batches per bucket do not.
    other = _EpochDataLoader(
        _dataset(data, "train", train=True, workers=workers), lambda p: 1, num_workers=workers
    )
    order = [expected[b["key"][0]] for b in batches]
    order1 = [expected[b["key"][0]] for b in other]
    assert sorted(order) == sorted(order1) and order != order1


def test_validation_sees_every_sample_once(bucketed) -> None:
    data, expected = bucketed
    manifest = read_manifest(data)
    val_keys = []
    for rank in (0, 1):
        for batch in _dataset(data, "val", train=False, rank=rank, world=2):
            assert len({expected[k] for k in batch["key"]}) == 1
            val_keys += batch["key"]
    assert len(val_keys) == len(set(val_keys)) == manifest["counts"]["val"]
    # The buckets take turns, so that the first batches hold every bucket.
    first = [expected[b["key"][0]] for b in _dataset(data, "val", train=False)][:3]
    assert first == ["0.5", "1", "2"]


def test_ranks_run_the_same_buckets_in_step_on_disjoint_samples(bucketed) -> None:
    data, _ = bucketed
    per_rank = [list(_dataset(data, "train", train=True, rank=r, world=2)) for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == len(_dataset(data, "train", train=True, rank=1, world=2))
    for a, b in zip(*per_rank):
        assert a["image"].shape == b["image"].shape  # the same bucket at every step
    keys = [[k for batch in batches for k in batch["key"]] for batches in per_rank]
    assert not set(keys[0]) & set(keys[1])


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("keep_positions", [True, False])
def test_bucketed_training_resumes_mid_epoch_exactly(bucketed, workers: int, keep_positions: bool) -> None:
    data, _ = bucketed

    def loader():
        return _EpochDataLoader(
            _dataset(data, "train", train=True, workers=workers), lambda p: 0, num_workers=workers
        )

    straight = [b["key"] for b in loader()]
    assert len(straight) >= 5
    first = loader()
    it = iter(first)
    head = [next(it)["key"] for _ in range(3)]
    state = first.state_dict()
    del it
    assert any("@" in k for k in state["positions"])  # positions are kept per (worker, bucket)
    if not keep_positions:
        state = {**state, "positions": {}}
    resumed = loader()
    resumed.load_state_dict(state)
    assert head + [b["key"] for b in resumed] == straight


def test_datamodule_batches_by_bucket_or_crops_when_told(bucketed) -> None:
    data, _ = bucketed
    sizes = {
        tuple(b["image"].shape[2:]) for b in ShardDataModule(data, 32, 2, num_workers=0).train_dataloader()
    }
    assert sizes == {(16, 32), (32, 32), (32, 16)}
    square = ShardDataModule(data, 32, 2, num_workers=0, aspect_ratio_buckets=False)
    assert {tuple(b["image"].shape[2:]) for b in square.val_dataloader()} == {(32, 32)}


def test_a_bucket_too_small_for_a_batch_is_warned_about(bucketed) -> None:
    data, _ = bucketed
    with pytest.warns(UserWarning, match="not trained on"):
        dataset = _dataset(data, "train", train=True, bs=8)
    assert set(dataset.buckets) < {"0.5", "1", "2"}
    with pytest.raises(ValueError, match="no aspect-ratio bucket"):
        _dataset(data, "train", train=True, bs=64)
