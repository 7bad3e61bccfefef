"""Data layer: captions, splits, OpenMoji and folder builders, shard reading, ShardDataModule."""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from infinity_lit.data import (
    ShardDataModule,
    ShardDataset,
    build_folder_shards,
    build_openmoji_shards,
    caption_from_cldr_alias,
    emoji_caption,
    iter_samples,
    load_split,
    read_manifest,
    split_of,
)
from infinity_lit.data.openmoji import EmojiRenderer, list_openmoji
from infinity_lit.data.shards import split_shards


def _tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}


def _val_keys(data_dir: Path) -> list[str]:
    return [key for key, _, _ in iter_samples(data_dir, "val")]


# ---------------------------------------------------------------- captions


@pytest.mark.parametrize(
    ("alias", "flag", "expected"),
    [
        (":woman_bowing_medium-dark_skin_tone:", False, "woman bowing, medium-dark skin tone"),
        (":thumbs_up_light_skin_tone:", False, "thumbs up, light skin tone"),
        (":grinning_face:", False, "grinning face"),
        (":Greece:", True, "flag, Greece"),
        (":family_man_woman_girl:", False, "family, man, woman, girl"),
        (
            ":kiss_woman_man_dark_skin_tone_light_skin_tone:",
            False,
            "kiss, woman, man, dark skin tone, light skin tone",
        ),
        (":couple_with_heart_medium-light_skin_tone:", False, "couple with heart, medium-light skin tone"),
        (":kiss_mark:", False, "kiss mark"),
        (":woman_red_hair:", False, "woman, red hair"),
        (":man_dark_skin_tone_bald:", False, "man, dark skin tone, bald"),
        (":keycap_#:", False, "keycap, #"),
        (":man’s_shoe:", False, "man's shoe"),
        (":A_button_(blood_type):", False, "A button (blood type)"),
        (":man_in_manual_wheelchair:", False, "man in manual wheelchair"),
    ],
)
def test_caption_from_cldr_alias(alias: str, flag: bool, expected: str) -> None:
    assert caption_from_cldr_alias(alias, flag=flag) == expected


@pytest.mark.parametrize(
    ("sequence", "expected"),
    [
        ("\U0001f647\U0001f3fe\u200d\u2640\ufe0f", "woman bowing, medium-dark skin tone"),
        ("\U0001f1fa\U0001f1f8", "flag, United States"),
        ("\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f", "flag, England"),
        ("\U0001f3f3\ufe0f\u200d\U0001f308", "rainbow flag"),  # a flag emoji, but not a country flag
        ("\u2b1f", "black pentagon"),  # not an emoji in CLDR: the Unicode character name
        ("\ue000", None),  # OpenMoji private-use extra
        ("\U0001f431\u200d\U0001f4bb", None),  # OpenMoji-only ZWJ sequence
    ],
)
def test_emoji_caption(sequence: str, expected: str | None) -> None:
    assert emoji_caption(sequence) == expected


def test_caption_from_empty_alias_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        caption_from_cldr_alias("::")


# ---------------------------------------------------------------- splits


def test_openmoji_catalogue_counts() -> None:
    emoji = list_openmoji()
    named = [e for e in emoji if e.caption]
    assert len(emoji) == 4495
    assert 4000 <= len(named) <= 4200
    assert all(e.caption == e.caption.strip() and e.caption for e in named)


def test_split_ratio_on_full_key_list() -> None:
    keys = [e.hexcode for e in list_openmoji() if e.caption]
    for fraction in (0.05, 0.25):
        n_val = sum(split_of(k, fraction) == "val" for k in keys)
        sd = math.sqrt(len(keys) * fraction * (1 - fraction))
        assert abs(n_val - len(keys) * fraction) < 4 * sd, (fraction, n_val)
    # Nested: a key in val at 5% stays in val at 25%.
    assert all(split_of(k, 0.25) == "val" for k in keys if split_of(k, 0.05) == "val")


def test_split_threshold_from_sha256() -> None:
    key = "1F600"
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64
    assert split_of(key, min(u + 1e-6, 0.999)) == "val"
    assert split_of(key, max(u - 1e-6, 0.0)) == "train"
    assert split_of(key, 0.0) == "train"
    with pytest.raises(ValueError):
        split_of(key, 1.0)


def test_split_does_not_depend_on_python_hash_seed() -> None:
    code = (
        "from infinity_lit.data.openmoji import list_openmoji; from infinity_lit.data import split_of;"
        "print(''.join('v' if split_of(e.hexcode, 0.05) == 'val' else 't' for e in list_openmoji()))"
    )
    runs = {
        seed: subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        ).stdout
        for seed in ("1", "2")
    }
    assert runs["1"] == runs["2"]
    assert runs["1"].strip() == "".join(
        "v" if split_of(e.hexcode, 0.05) == "val" else "t" for e in list_openmoji()
    )


# ---------------------------------------------------------------- OpenMoji shards


def test_openmoji_manifest_and_layout(openmoji_shards: Path) -> None:
    manifest = read_manifest(openmoji_shards)
    assert manifest["resolution"] == 32
    assert manifest["counts"]["train"] + manifest["counts"]["val"] == 64
    # The emoji --limit leaves out are not "skipped": 64 were asked for, and 64 rendered.
    named = sum(1 for e in list_openmoji() if e.caption)
    assert manifest["skipped"] == {"count": 0, "reasons": {}}
    assert manifest["selected"] == f"64 of the {named} named emoji (--limit 64)"
    for split in ("train", "val"):
        shards = manifest["splits"][split]["shards"]
        assert len(shards) >= 2 and all(s["count"] <= 8 for s in shards)
        assert [s["name"] for s in shards] == [f"{split}-{i:06d}.tar" for i in range(len(shards))]
        assert sum(s["count"] for s in shards) == manifest["counts"][split]
    assert "--limit 64" in manifest["created_by"] and manifest["created_by"].startswith(
        "infinity-lit data openmoji"
    )
    attribution = (openmoji_shards / "ATTRIBUTION.md").read_text()
    assert "CC BY-SA 4.0" in attribution and "https://openmoji.org" in attribution
    assert (openmoji_shards / "preview.png").is_file()


def test_openmoji_shard_contents(openmoji_shards: Path) -> None:
    manifest = read_manifest(openmoji_shards)
    coloured = 0
    for split in ("train", "val"):
        for shard in manifest["splits"][split]["shards"]:
            members = _tar_members(openmoji_shards / shard["name"])
            keys = sorted({name.split(".", 1)[0] for name in members})
            assert len(keys) == shard["count"]
            for key in keys:
                assert {f"{key}.png", f"{key}.txt", f"{key}.json"} <= set(members)
                meta = json.loads(members[f"{key}.json"])
                sequence = "".join(chr(int(cp[2:], 16)) for cp in meta["codepoints"])
                assert "-".join(f"{ord(c):04X}" for c in sequence) == key == meta["openmoji_hexcode"]
                assert meta["licence"] == "CC BY-SA 4.0" and "OpenMoji" in meta["source"]
                assert members[f"{key}.txt"].decode() == emoji_caption(sequence)
                assert split_of(key, manifest["settings"]["val_fraction"]) == split
                image = Image.open(io.BytesIO(members[f"{key}.png"]))
                assert image.mode == "RGB" and image.size == (32, 32)
                arr = np.asarray(image, dtype=np.int16)
                ink = (255 - arr.min(axis=2)) > 16
                assert ink.any(), f"{key} rendered blank"
                assert (arr[0, :] == 255).all() and (arr[:, 0] == 255).all(), f"{key}: border is not white"
                rows, cols = np.nonzero(ink)
                # Centred, and the longer side fills about `fill` = 90% of the square.
                assert abs((rows.min() + rows.max()) / 2 - 15.5) <= 1.5
                assert abs((cols.min() + cols.max()) / 2 - 15.5) <= 1.5
                assert 26 <= max(np.ptp(rows), np.ptp(cols)) + 1 <= 31
                coloured += bool((arr.max(axis=2) - arr.min(axis=2) > 40).any())
    # COLR layers, not black glyph outlines: most emoji carry colour.
    assert coloured >= 0.75 * (manifest["counts"]["train"] + manifest["counts"]["val"])


def test_renderer_flags_blank_and_unshaped() -> None:
    renderer = EmojiRenderer(32)
    assert renderer.problem("a", renderer.render("a")) == "blank_render"  # not in the font
    pair = "\U0001f1e6\U0001f1e6"  # two regional indicators that form no flag
    assert renderer.problem(pair, renderer.render(pair)) == "unshaped_sequence"
    assert renderer.problem("\U0001f600", renderer.render("\U0001f600")) is None


def test_build_is_idempotent(tmp_path: Path) -> None:
    first = build_openmoji_shards(tmp_path, 16, limit=6, shard_size=4, progress=False)
    assert first["reused"] is False
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.tar")}
    again = build_openmoji_shards(tmp_path, 16, limit=6, shard_size=4, progress=False)
    assert again["reused"] is True and again["counts"] == first["counts"]
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.tar")} == mtimes
    other = build_openmoji_shards(tmp_path, 16, limit=6, shard_size=2, progress=False)
    assert other["reused"] is False
    assert len(list(tmp_path.glob("train-*.tar"))) == len(other["splits"]["train"]["shards"])


@pytest.mark.parametrize("resolution", [0, -32, 33, 32.0, True])
def test_bad_resolution_is_rejected(tmp_path: Path, resolution: object) -> None:
    with pytest.raises(ValueError, match="positive even"):
        build_openmoji_shards(tmp_path, resolution, limit=2, progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive even"):
        ShardDataModule(tmp_path, resolution=resolution)  # type: ignore[arg-type]


# ---------------------------------------------------------------- reading


def test_iter_samples_and_load_split(openmoji_shards: Path) -> None:
    manifest = read_manifest(openmoji_shards)
    samples = list(iter_samples(openmoji_shards, "val"))
    assert len(samples) == manifest["counts"]["val"]
    expected_keys = []
    for shard in manifest["splits"]["val"]["shards"]:
        names = list(_tar_members(openmoji_shards / shard["name"]))
        expected_keys += list(dict.fromkeys(n.split(".", 1)[0] for n in names))
    assert [k for k, _, _ in samples] == expected_keys
    images, captions, keys = load_split(openmoji_shards, "val", 16)
    assert images.dtype == torch.uint8 and images.shape == (len(samples), 3, 16, 16)
    assert keys == expected_keys and captions == [c for _, _, c in samples]
    # Downsampling 32 → 16 keeps the mean colour of each image.
    full = torch.stack([torch.from_numpy(np.asarray(im)).permute(2, 0, 1) for _, im, _ in samples]).float()
    assert torch.allclose(images.float().mean((2, 3)), full.mean((2, 3)), atol=3.0)


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_missing_data_says_how_to_build(tmp_path: Path, make: str) -> None:
    data_dir = tmp_path / "nothing"
    if make == "empty":
        data_dir.mkdir()
    with pytest.raises(FileNotFoundError, match="infinity-lit data openmoji --out"):
        ShardDataModule(data_dir, resolution=32).setup("fit")
    with pytest.raises(FileNotFoundError, match="infinity-lit data openmoji --out"):
        list(iter_samples(data_dir, "val"))


# ---------------------------------------------------------------- DataModule


def test_datamodule_batches(openmoji_shards: Path) -> None:
    dm = ShardDataModule(openmoji_shards, resolution=32, batch_size=4, num_workers=0, val_batch_size=5)
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == dm.num_samples["train"] // 4
    for batch in batches:
        assert set(batch) == {"image", "caption", "key", "position", "skipped"}
        assert batch["skipped"] == []  # intact shards: nothing skipped
        assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
        assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
        assert len(batch["caption"]) == len(batch["key"]) == 4 and all(
            isinstance(c, str) for c in batch["caption"]
        )
    keys = [k for b in batches for k in b["key"]]
    assert len(set(keys)) == len(keys)
    # Stored pixels come through unchanged at the build resolution: compare with the PNG in the tar.
    batch = batches[0]
    key = batch["key"][0]
    png = next(
        m[f"{key}.png"]
        for s in read_manifest(openmoji_shards)["splits"]["train"]["shards"]
        if f"{key}.png" in (m := _tar_members(openmoji_shards / s["name"]))
    )
    reference = torch.from_numpy(np.asarray(Image.open(io.BytesIO(png)))).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(batch["image"][0], reference)
    assert batch["image"].min() < -0.5 and batch["image"].max() == 1.0  # dark outlines on white

    val = list(dm.val_dataloader())
    assert [len(b["key"]) for b in val][:-1] == [5] * (len(val) - 1)
    assert [k for b in val for k in b["key"]] == _val_keys(openmoji_shards)
    assert [k for b in dm.test_dataloader() for k in b["key"]] == _val_keys(openmoji_shards)


def test_datamodule_resizes(openmoji_shards: Path) -> None:
    dm = ShardDataModule(openmoji_shards, resolution=16, batch_size=3, num_workers=0)
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (3, 3, 16, 16)
    images, _, keys = load_split(openmoji_shards, "val", 16)
    assert keys[:3] == batch["key"]
    assert torch.allclose(batch["image"], images[:3].float() / 127.5 - 1)


def test_train_order_is_seeded_and_changes_per_epoch(openmoji_shards: Path) -> None:
    def epochs(seed: int) -> list[list[str]]:
        loader = ShardDataModule(openmoji_shards, resolution=32, batch_size=4, num_workers=0, seed=seed)
        loader = loader.train_dataloader()
        return [[k for b in loader for k in b["key"]] for _ in range(2)]

    first, again, other = epochs(0), epochs(0), epochs(1)
    assert first == again
    assert first[0] != first[1] and first[0] != other[0]
    n_train = read_manifest(openmoji_shards)["counts"]["train"]
    for keys in first + other:
        assert len(keys) == len(set(keys)) == n_train // 4 * 4


@pytest.mark.parametrize(
    ("world_size", "num_workers", "shard_split_min"),
    [(2, 2, 16), (1, 2, 1), (2, 1, 1), (3, 0, 16)],
    ids=["2ranks-2workers-by-sample", "1rank-2workers-by-shard", "2ranks-1worker-by-shard", "3ranks-main"],
)
def test_val_split_covers_each_sample_once(
    openmoji_shards: Path, world_size: int, num_workers: int, shard_split_min: int
) -> None:
    seen: Counter[str] = Counter()
    for rank in range(world_size):
        dataset = ShardDataset(
            openmoji_shards,
            "val",
            32,
            3,
            train=False,
            rank=rank,
            world_size=world_size,
            num_workers=num_workers,
            shard_split_min=shard_split_min,
        )
        loader = DataLoader(dataset, batch_size=None, num_workers=num_workers)
        batches = list(loader)
        assert len(batches) == len(loader)
        for batch in batches:
            seen.update(batch["key"])
    assert sorted(seen) == sorted(_val_keys(openmoji_shards))
    assert set(seen.values()) == {1}


def test_every_rank_gets_validation_data(openmoji_shards: Path) -> None:
    n_val = read_manifest(openmoji_shards)["counts"]["val"]
    # Ranks are interleaved over the samples: with as many ranks as samples, each rank gets exactly one.
    for rank in (0, n_val - 1):
        dataset = ShardDataset(
            openmoji_shards, "val", 32, 4, train=False, rank=rank, world_size=n_val, num_workers=2
        )
        assert len(dataset) == 1
        assert [k for b in DataLoader(dataset, batch_size=None, num_workers=2) for k in b["key"]] == [
            _val_keys(openmoji_shards)[rank]
        ]
    with pytest.raises(ValueError, match="fewer than the"):
        ShardDataset(openmoji_shards, "val", 32, 4, train=False, rank=0, world_size=n_val + 1)


def test_train_split_across_ranks_and_workers(openmoji_shards: Path) -> None:
    n_train = read_manifest(openmoji_shards)["counts"]["train"]
    keys_per_rank, lengths = [], []
    for rank in range(2):
        dataset = ShardDataset(
            openmoji_shards, "train", 32, 2, train=True, rank=rank, world_size=2, num_workers=2, seed=3
        )
        loader = DataLoader(dataset, batch_size=None, num_workers=2)
        batches = list(loader)
        assert len(batches) == len(loader)
        lengths.append(len(batches))
        keys_per_rank.append([k for b in batches for k in b["key"]])
    assert lengths[0] == lengths[1] == 2 * ((n_train // 4) // 2)  # 2 workers × full batches of 2
    everything = keys_per_rank[0] + keys_per_rank[1]
    assert len(everything) == len(set(everything))  # no sample twice in an epoch
    assert len(everything) >= n_train - 4 * 2  # at most one partial batch dropped per worker


def _corrupt_one_val_png(src: Path, dst: Path) -> str:
    shutil.copytree(src, dst)
    shard = dst / read_manifest(dst)["splits"]["val"]["shards"][0]["name"]
    members = _tar_members(shard)
    victim = sorted(n for n in members if n.endswith(".png"))[1]
    with tarfile.open(shard, "w") as tar:
        for name, data in members.items():
            data = b"\x89PNG\r\n\x1a\n this is not a png" if name == victim else data
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return victim.split(".", 1)[0]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_sample_is_skipped_and_counted(
    openmoji_shards: Path, tmp_path: Path, num_workers: int
) -> None:
    data_dir = tmp_path / "corrupt"
    bad = _corrupt_one_val_png(openmoji_shards, data_dir)
    dm = ShardDataModule(data_dir, resolution=32, batch_size=4, num_workers=num_workers)
    dm.setup("validate")
    if num_workers == 0:
        with pytest.warns(UserWarning, match=rf"{bad}.*val-000000\.tar"):
            keys = [k for b in dm.val_dataloader() for k in b["key"]]
    else:  # the warning is printed by the worker process
        keys = [k for b in dm.val_dataloader() for k in b["key"]]
    assert bad not in keys
    assert sorted([*keys, bad]) == sorted(_val_keys(openmoji_shards))
    assert dm.skipped_samples == 1 and dm.skipped_by_loader == {"val": 1}

    strict = ShardDataModule(data_dir, resolution=32, batch_size=4, num_workers=num_workers, strict=True)
    with pytest.raises(ValueError, match=bad):
        list(strict.val_dataloader())


def test_iter_samples_can_leave_the_report_to_its_caller(openmoji_shards: Path, tmp_path: Path) -> None:
    import warnings

    data_dir = tmp_path / "corrupt"
    bad = _corrupt_one_val_png(openmoji_shards, data_dir)
    unreadable: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # recorded, not warned per sample
        keys = [key for key, _, _ in iter_samples(data_dir, "val", unreadable=unreadable)]
    assert sorted([*keys, bad]) == sorted(_val_keys(openmoji_shards))
    assert list(unreadable) == [f"val-000000.tar/{bad}"]


def test_datamodule_in_lightning_fit(openmoji_shards: Path, tmp_path: Path) -> None:
    import lightning as L

    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)
            self.train_keys: list[list[str]] = []
            self.val_keys: list[str] = []

        def on_train_epoch_start(self) -> None:
            self.train_keys.append([])

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            self.train_keys[-1] += batch["key"]
            self.log("skipped", float(self.trainer.datamodule.skipped_samples))
            return self.layer(batch["image"].mean((2, 3))).pow(2).mean()

        def validation_step(self, batch: dict, batch_idx: int) -> None:
            if not self.trainer.sanity_checking:
                self.val_keys += batch["key"]

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    dm = ShardDataModule(openmoji_shards, resolution=32, batch_size=4, num_workers=0)
    model = Probe()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    n_train = dm.num_samples["train"]
    assert trainer.num_training_batches == n_train // 4
    assert [len(k) for k in model.train_keys] == [n_train // 4 * 4] * 2
    assert model.train_keys[0] != model.train_keys[1]  # Lightning's epoch reaches the shuffling
    assert sorted(model.val_keys) == sorted(_val_keys(openmoji_shards) * 2)


def _thirds(size: tuple[int, int]) -> Image.Image:
    """Red | green | blue vertical thirds."""
    w, h = size
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 3, 0] = 255
    arr[:, w // 3 : 2 * w // 3, 1] = 255
    arr[:, 2 * w // 3 :, 2] = 255
    return Image.fromarray(arr)


def test_folder_builder(tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    _thirds((96, 32)).save(images / "wide.png")  # centre crop keeps the green third
    _thirds((64, 64)).save(images / "sub" / "photo.jpg")
    (images / "sub" / "photo.txt").write_text("a photo from a sidecar\n")
    transparent = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    transparent.paste((0, 0, 255, 255), (10, 10, 30, 30))
    transparent.save(images / "alpha.png")
    (images / "alpha.txt").write_text("sidecar loses to jsonl")
    Image.new("RGB", (50, 50), (200, 100, 0)).save(images / "plain.png")
    Image.new("RGB", (40, 40), (0, 120, 0)).save(images / "grüner Tee.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    captions = tmp_path / "captions.jsonl"
    captions.write_text(
        json.dumps({"image": "wide.png", "caption": "three stripes"})
        + "\n\n"
        + json.dumps({"image": str(images / "alpha.png"), "caption": "a blue square"})
        + "\n"
        + json.dumps({"image": "gone.png", "caption": "no such image"})
        + "\n"
    )
    out = tmp_path / "shards"
    with pytest.warns(UserWarning, match="broken.png"):
        manifest = build_folder_shards(images, out, 32, captions=captions, val_fraction=0.0, progress=False)

    assert manifest["counts"] == {"train": 5, "val": 0}
    assert manifest["skipped"] == {"count": 1, "reasons": {"unreadable_image": 1}}
    assert manifest["uncaptioned"] == 2 and manifest["captions_without_image"] == 1
    samples = {key: (image, caption) for key, image, caption in iter_samples(out, "train")}
    assert {k: c for k, (_, c) in samples.items()} == {
        "alpha": "a blue square",
        "grüner_Tee": "",  # a non-ASCII name keeps its letters through the tar members and the reader
        "plain": "",
        "sub_photo": "a photo from a sidecar",
        "wide": "three stripes",
    }
    wide = np.asarray(samples["wide"][0])
    assert wide.shape == (32, 32, 3)
    assert (wide[:, 2:-2, 1] > 200).all() and (wide[:, 2:-2, 0] < 50).all() and (wide[:, 2:-2, 2] < 50).all()
    alpha = np.asarray(samples["alpha"][0])
    assert (alpha[0, 0] == 255).all() and tuple(alpha[16, 16]) == (0, 0, 255)  # transparent → white
    meta = json.loads(_tar_members(out / "train-000000.tar")["sub_photo.json"])
    assert meta["path"] == "sub/photo.jpg" and meta["original_size"] == [64, 64]

    # No validation samples: the data set exists, so the error says to rebuild with a larger fraction and
    # the builder's summary warns at once.
    with pytest.raises(FileNotFoundError, match=r"has no 'val' samples \(it holds 5 'train'\): rebuild it"):
        split_shards(out, "val")
    from infinity_lit.cli.data import _summary

    assert "warning: no 'val' samples" in _summary(manifest, str(out))

    with pytest.raises(ValueError, match="nothing under --out is read as input"):
        build_folder_shards(images, images, 32, progress=False)  # --out the image folder itself

    again = build_folder_shards(images, out, 32, captions=captions, val_fraction=0.0, progress=False)
    assert again["reused"] is True
    (images / "plain.txt").write_text("now captioned")
    changed = build_folder_shards(images, out, 32, captions=captions, val_fraction=0.0, progress=False)
    assert changed["reused"] is False and changed["uncaptioned"] == 1


def test_folder_builder_converts_bit_depths_and_modes(tmp_path: Path) -> None:
    """16-bit grey used to come out white (Pillow clips at 255); every mode goes through the one loader."""
    images = tmp_path / "images"
    (images / "deep").mkdir(parents=True)
    Image.fromarray(np.full((32, 32), 32768, dtype=np.uint16)).save(images / "grey16.png")  # mode I;16
    Image.fromarray(np.full((32, 32), 1000, dtype=np.int32)).save(images / "deep" / "int32.tif")  # mode I
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255])
    palette.paste(1, (0, 0, 32, 16))  # top half blue (index 1), bottom half index 0, transparent
    palette.save(images / "palette.gif", transparency=0)
    Image.new("CMYK", (32, 32), (0, 0, 0, 128)).save(images / "cmyk.tif")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG")
    (images / "deep" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (images / "junk.png").write_bytes(b"not a png")
    out = tmp_path / "shards"
    with pytest.warns(UserWarning) as caught:
        manifest = build_folder_shards(images, out, 32, val_fraction=0.0, progress=False)
    skipped = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert len(skipped) == 1 and "skipped 2 unreadable image(s)" in skipped[0]
    assert "deep/cut.jpg (" in skipped[0] and "junk.png (" in skipped[0] and "truncated" in skipped[0]
    assert manifest["skipped"] == {"count": 2, "reasons": {"unreadable_image": 2}}
    assert list(manifest["unreadable_images"]) == ["deep/cut.jpg", "junk.png"]
    got = {key: np.asarray(image) for key, image, _ in iter_samples(out, "train")}
    assert sorted(got) == ["cmyk", "deep_int32", "grey16", "palette"]
    assert (got["grey16"] == 128).all()  # 32768 >> 8, not white
    assert (got["deep_int32"] == 1000 >> 8).all()
    assert (got["palette"][:16] == (0, 0, 255)).all() and (got["palette"][16:] == 255).all()
    assert (got["cmyk"] == 127).all()  # 255 · (255 − 128) / 255


def test_folder_builder_with_no_readable_image_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"not a png")
    (tmp_path / "b.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"none of the 2 image\(s\).*a\.png.*b\.jpg.*re-save"):
        build_folder_shards(tmp_path, tmp_path / "out", 8, progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_folder_builder_bad_jsonl_line(tmp_path: Path) -> None:
    _thirds((8, 8)).save(tmp_path / "a.png")
    captions = tmp_path / "c.jsonl"
    captions.write_text('{"image": "a.png", "caption": "ok"}\n{"image": "a.png"}\n')
    with pytest.raises(ValueError, match=r"c\.jsonl:2"):
        build_folder_shards(tmp_path, tmp_path / "out", 8, captions=captions, progress=False)


def test_folder_keys_are_safe_and_unique() -> None:
    from infinity_lit.data.folder import _key

    taken: set[str] = set()
    assert _key(Path("holiday/photo.v2.jpg"), taken) == "holiday_photo_v2"
    assert _key(Path("a b.png"), taken) == "a_b"
    clash = _key(Path("a_b.png"), taken)
    assert clash.startswith("a_b-") and len(clash) == len("a_b-") + 8 and "." not in clash
    # Names in other scripts keep their letters (not "image", "caf" or "_"), one key per NFC form.
    assert _key(Path("日本の猫.jpg"), taken) == "日本の猫"
    assert _key(Path("naïve cat.png"), taken) == "naïve_cat"
    assert _key(Path("cafe\u0301.png"), taken) == "café"  # decomposed (macOS) → composed


# ---------------------------------------------------------------- CLI


def test_cli_help_and_folder_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from infinity_lit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["data", "openmoji", "--help"])
    assert exit_info.value.code == 0
    assert "--resolution" in capsys.readouterr().out

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        _thirds((20 + i, 20)).save(images / f"im{i}.png")
    main(["data", "folder", "--images", str(images), "--out", str(tmp_path / "out"), "--resolution", "16"])
    printed = capsys.readouterr().out
    assert "uncaptioned: 3" in printed
    assert (
        read_manifest(tmp_path / "out")["counts"]["train"] + read_manifest(tmp_path / "out")["counts"]["val"]
        == 3
    )
    # A warning reads as the toolkit's own line, not Python's "FILE:LINE: UserWarning: …" with a code line.
    (images / "broken.jpg").write_bytes(b"not an image")
    main(["data", "folder", "--images", str(images), "--out", str(tmp_path / "out2"), "--resolution", "16"])
    err = capsys.readouterr().err
    assert "warning: skipped 1 unreadable image(s)" in err and "broken.jpg" in err
    assert "UserWarning" not in err and ".py:" not in err


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("keep_positions", [True, False])
def test_training_loader_resumes_mid_epoch_exactly(openmoji_shards, num_workers, keep_positions):
    """Stop after 3 batches, save the loader's state, continue in a new loader: the batches are those of
    one uninterrupted pass, none twice, none skipped (with the raw positions: nothing decoded twice; without,
    as on another rank: the batches already yielded are decoded again and dropped)."""
    from infinity_lit.data.datamodule import _EpochDataLoader

    def loader():
        dataset = ShardDataset(
            openmoji_shards, "train", 32, 4, train=True, num_workers=num_workers, shuffle_buffer=8, seed=3
        )
        return _EpochDataLoader(dataset, lambda passes: 0, num_workers=num_workers)

    straight = [b["key"] for b in loader()]
    assert len(straight) == len(loader()) >= 6
    first = loader()
    it = iter(first)
    head = [next(it)["key"] for _ in range(3)]
    state = first.state_dict()
    del it
    assert state["epoch"] == 0 and state["batches"] == 3
    if not keep_positions:
        state = {**state, "positions": {}}
    resumed = loader()
    resumed.load_state_dict(state)
    tail = [b["key"] for b in resumed]
    assert head + tail == straight
    # A state of another epoch is not used: the next pass (epoch 1 here) starts afresh.
    again = loader()
    again._epoch_fn = lambda passes: 1
    again.load_state_dict(state)
    assert len(list(again)) == len(straight)


def test_training_order_follows_the_run_seed(openmoji_shards, monkeypatch):
    dm = ShardDataModule(openmoji_shards, resolution=32, batch_size=4, num_workers=0)
    orders = {}
    for seed in ("0", "1", "0"):
        monkeypatch.setenv("PL_GLOBAL_SEED", seed)
        orders.setdefault(seed, []).append([k for b in dm.train_dataloader() for k in b["key"]])
    assert orders["0"][0] == orders["0"][1] != orders["1"][0]
    assert len(orders["0"][0]) == len(orders["1"][0])  # (the dropped partial batch differs)
