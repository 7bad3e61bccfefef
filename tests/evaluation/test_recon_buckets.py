"""``eval recon`` on shards with aspect-ratio buckets: every bucket reconstructed at its own size (no resizing,
the tokenizer's schedule for that size), numbers per bucket and pooled over all buckets' images."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch
from conftest import TINY_TOKENIZER, stand_in_features
from PIL import Image

from infinity_lit.data.shards import read_manifest
from infinity_lit.evaluation.recon import reconstruction_record
from infinity_lit.metrics.fid import fid_from_features
from infinity_lit.metrics.reconstruction import PSNR_CAP_DB, psnr_per_image, ssim, to_uint8


def bucket_images(data, split: str, bucket: str) -> torch.Tensor:
    """One bucket's ``split`` images as uint8 (N, 3, H, W), read from the tar files in shard and member
    order (the order the shards were written in)."""
    out = []
    for shard in read_manifest(data)["splits"][split]["shards"]:
        if shard["bucket"] != bucket:
            continue
        with tarfile.open(data / shard["name"]) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".png"):
                    image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
                    out.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
    return torch.stack(out)


def load(ckpt):
    from infinity_lit.checkpoints import TOKENIZER, read_checkpoint
    from infinity_lit.tokenizer import load_tokenizer

    return load_tokenizer(read_checkpoint(ckpt, TOKENIZER), map_location="cpu")


def expected_bucket(tokenizer, images: torch.Tensor) -> dict:
    """PSNR per scale, SSIM and the full reconstructions of uint8 images at their own size, by
    ``tokenizer.reconstruct`` (one batch)."""
    x = images.float() / 127.5 - 1
    with torch.no_grad():
        recon = {k: tokenizer.reconstruct(x, num_scales=k).float().clamp(-1, 1) for k in (1, 2, 3)}
    psnrs = {k: psnr_per_image(r, x).clamp_max(PSNR_CAP_DB) for k, r in recon.items()}
    return {"psnrs": psnrs, "ssim": float(ssim(recon[3], x)), "recon": recon[3]}


def test_each_bucket_at_its_own_size_and_pooled(bucketed_shards, tiny_tokenizer_ckpt, tmp_path):
    data, _ = bucketed_shards
    manifest = read_manifest(data)
    tokenizer = load(tiny_tokenizer_ckpt)
    record = reconstruction_record(tiny_tokenizer_ckpt, data, tmp_path / "all", rfid=False)
    per = record["metrics"]["per_aspect_ratio"]
    assert list(per) == ["0.5", "1", "2"]  # every bucket with held-out images, ascending h/w
    assert record["inputs"]["aspect_ratio_buckets"] == ["0.5", "1", "2"]
    all_psnrs = []
    for name, values in per.items():
        images = bucket_images(data, "val", name)
        height, width = manifest["buckets"][name]["size"]
        # Not resized: the bucket's own size, quantised with the tokenizer's schedule for it.
        assert tuple(images.shape[-2:]) == (height, width)
        assert values["image_size"] == [height, width]
        assert values["scale_schedule"] == [list(hw) for hw in tokenizer.check_image_size(height, width)]
        assert values["num_images"] == len(images) == manifest["buckets"][name]["counts"]["val"]
        expected = expected_bucket(tokenizer, images)
        assert values["psnr"] == pytest.approx(float(expected["psnrs"][3].mean()), abs=1e-4)
        for k in (1, 2, 3):
            assert values["psnr_per_scale"][str(k)] == pytest.approx(
                float(expected["psnrs"][k].mean()), abs=1e-4
            )
        assert values["ssim"] == pytest.approx(expected["ssim"], abs=1e-5)
        assert values["rfid"] is None
        all_psnrs.append(expected["psnrs"][3])
    # The non-square buckets have schedules of their own (the method's templates), not the square one.
    assert per["0.5"]["scale_schedule"][-1] == [2, 4] and per["2"]["scale_schedule"][-1] == [4, 2]
    # Pooled: per image, so the buckets weigh by their image counts.
    counts = {name: v["num_images"] for name, v in per.items()}
    assert record["num_images"] == sum(counts.values()) == manifest["counts"]["val"]
    weighted = sum(per[n]["psnr"] * c for n, c in counts.items()) / sum(counts.values())
    assert record["metrics"]["psnr"] == pytest.approx(weighted, abs=1e-4)
    assert record["metrics"]["psnr"] == pytest.approx(float(torch.cat(all_psnrs).mean()), abs=1e-4)
    weighted_ssim = sum(per[n]["ssim"] * c for n, c in counts.items()) / sum(counts.values())
    assert record["metrics"]["ssim"] == pytest.approx(weighted_ssim, abs=1e-6)
    for k in ("1", "2", "3"):
        pooled = sum(per[n]["psnr_per_scale"][k] * c for n, c in counts.items()) / sum(counts.values())
        assert record["metrics"]["psnr_per_scale"][k] == pytest.approx(pooled, abs=1e-4)
    assert record["metrics"]["rfid"] is None
    # eval report lists the pooled record and then each bucket's numbers.
    from infinity_lit.evaluation.report import collect_run, metrics_rows

    rows = metrics_rows([collect_run(tmp_path / "all")])
    assert [r["file"] for r in rows] == [
        "metrics.json",
        *(f"metrics.json · h/w {b}" for b in ("0.5", "1", "2")),
    ]
    assert [r["PSNR"] for r in rows[1:]] == [f"{per[b]['psnr']:.2f}" for b in ("0.5", "1", "2")]
    assert [r["images"] for r in rows] == [
        str(record["num_images"]),
        *(str(counts[b]) for b in ("0.5", "1", "2")),
    ]
    # The record's top-level size and schedule stay the tokenizer's own.
    assert record["image_size"] == [32, 32] and record["scale_schedule"] == TINY_TOKENIZER["scale_schedule"]

    # Reused when nothing changed; max_images is another input.
    again = reconstruction_record(tiny_tokenizer_ckpt, data, tmp_path / "all", rfid=False)
    assert again["reused"] is True and again["metrics"] == record["metrics"]

    # max_images applies per bucket: the first images of each bucket (some buckets hold fewer).
    cap = 3
    assert min(counts.values()) < cap < max(counts.values())
    capped = reconstruction_record(tiny_tokenizer_ckpt, data, tmp_path / "all", rfid=False, max_images=cap)
    assert not capped.get("reused")
    for name, values in capped["metrics"]["per_aspect_ratio"].items():
        assert values["num_images"] == min(cap, counts[name])
        first = expected_bucket(tokenizer, bucket_images(data, "val", name)[:cap])
        assert values["psnr"] == pytest.approx(float(first["psnrs"][3].mean()), abs=1e-4)
    assert capped["num_images"] == sum(min(cap, c) for c in counts.values())


def test_rfid_per_bucket_and_pooled(bucketed_shards, tiny_tokenizer_ckpt, tmp_path, stand_in_inception):
    """rFID of each bucket against its originals, and of all reconstructions against all originals (the
    stand-in features of ``conftest``); a bucket of one image has none."""
    data, _ = bucketed_shards
    tokenizer = load(tiny_tokenizer_ckpt)
    record = reconstruction_record(
        tiny_tokenizer_ckpt, data, tmp_path / "rfid", inception_weights=stand_in_inception
    )
    real, recon = [], []
    for name, values in record["metrics"]["per_aspect_ratio"].items():
        images = bucket_images(data, "val", name)
        feats = (
            stand_in_features(None, images),
            stand_in_features(None, to_uint8(expected_bucket(tokenizer, images)["recon"])),
        )
        assert values["rfid"] == pytest.approx(fid_from_features(feats[1], feats[0]), rel=1e-6, abs=1e-6)
        real.append(feats[0])
        recon.append(feats[1])
    pooled = fid_from_features(torch.cat(recon), torch.cat(real))
    assert record["metrics"]["rfid"] == pytest.approx(pooled, rel=1e-6, abs=1e-6)
    assert all(record["metrics"]["rfid"] != v["rfid"] for v in record["metrics"]["per_aspect_ratio"].values())

    one = reconstruction_record(
        tiny_tokenizer_ckpt, data, tmp_path / "one", max_images=1, inception_weights=stand_in_inception
    )
    assert all(v["rfid"] is None for v in one["metrics"]["per_aspect_ratio"].values())
    assert one["num_images"] == 3 and one["metrics"]["rfid"] is not None
    assert any(w.startswith("aspect-ratio bucket 0.5: rFID not computed") for w in one["warnings"])


def test_square_shards_keep_their_record(openmoji_shards, tiny_tokenizer_ckpt, tmp_path):
    """Square shards: no per-bucket entry and no bucket input, the numbers of the images at their size."""
    record = reconstruction_record(tiny_tokenizer_ckpt, openmoji_shards, tmp_path / "square", rfid=False)
    assert set(record["metrics"]) == {"psnr", "ssim", "rfid", "psnr_per_scale"}
    assert "aspect_ratio_buckets" not in record["inputs"]
    from infinity_lit.evaluation.images import open_image_set

    images = torch.stack([im for _, im, _ in open_image_set(openmoji_shards, "val").iter_items()])
    assert tuple(images.shape[-2:]) == (32, 32) and record["num_images"] == len(images)
    expected = expected_bucket(load(tiny_tokenizer_ckpt), images)
    assert record["metrics"]["psnr"] == pytest.approx(float(expected["psnrs"][3].mean()), abs=1e-4)


def test_a_bucket_without_a_schedule_is_refused(bucketed_shards, tiny_tokenizer_config, tmp_path):
    """A 2-scale tokenizer has no schedule for the 16×32 bucket (the method's template for h/w 0.5 ends at
    2×4 only with 3 scales): one clear error naming the bucket, its size and what to do, before any work."""
    from dataclasses import replace

    from infinity_lit.checkpoints import TOKENIZER, write_checkpoint
    from infinity_lit.tokenizer import BitwiseTokenizer

    config = replace(tiny_tokenizer_config, scale_schedule=[(1, 1), (4, 4)])
    ckpt = write_checkpoint(
        tmp_path / "two.ckpt",
        {"tokenizer": config.to_dict()},
        BitwiseTokenizer(config).state_dict(),
        prefix=TOKENIZER.prefix,
    )
    data, _ = bucketed_shards
    with pytest.raises(ValueError) as info:
        reconstruction_record(ckpt, data, tmp_path / "out", rfid=False)
    message = str(info.value)
    assert message.startswith(f"aspect-ratio bucket 0.5 of {data} holds 16×32 images")
    assert "(32×32 px, stride 8, 2 scales) has no scale schedule" in message
    # What works: a tokenizer of 3 scales (the template ends at 2×4 with 3), or a schedule of its own there.
    assert "train a tokenizer with 3 scales (the template ends at 2×4 with 3)" in message
    assert "a schedule ending at (2, 4) (model.tokenizer.aspect_ratio_schedules" in message
    assert not (tmp_path / "out" / "metrics.json").exists()
