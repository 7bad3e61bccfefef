"""Per-aspect-ratio scores: FID / KID against one bucket of bucketed reference shards, or the pooled split."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from infinity_lit.data.shards import read_manifest
from infinity_lit.evaluation.scoring import score_generated
from infinity_lit.metrics.fid import fid_from_features


def _features(_model, batch, _batch_size=50):
    # Stand-in for Inception: per-image channel means and standard deviations (N, 6), float64.
    x = batch.double()
    return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def _split_images(data, split: str, bucket: str | None) -> list[np.ndarray]:
    """The split's images of one bucket (all if None), read from the tar files directly."""
    manifest = read_manifest(data)
    out = []
    for shard in manifest["splits"][split]["shards"]:
        if bucket is not None and shard["bucket"] != bucket:
            continue
        with tarfile.open(data / shard["name"]) as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                if member.name.endswith(".png"):
                    out.append(
                        np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
                    )
    return out


def _stack(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def test_fid_against_one_bucket_and_pooled(bucketed_shards, tmp_path, monkeypatch) -> None:
    data, _ = bucketed_shards
    monkeypatch.setattr("infinity_lit.evaluation.scoring.load_inception", lambda *a, **k: object())
    monkeypatch.setattr("infinity_lit.evaluation.scoring.inception_features", _features)
    generated = tmp_path / "tall"
    generated.mkdir()
    tall_train = _split_images(data, "train", "2")
    for i, image in enumerate(tall_train):
        Image.fromarray(image).save(generated / f"{i:05d}.png")
    (generated / "metadata.jsonl").write_text(
        "".join(json.dumps({"file": f"{i:05d}.png", "index": i, "prompt": "p", "aspect_ratio": 2.0}) + "\n"
                for i in range(len(tall_train)))
    )  # fmt: skip
    kw = dict(use_feature_cache=False, kid_subsets=3)
    bucket = score_generated(generated, data, reference_bucket="2", **kw)
    reference = _split_images(data, "val", "2")
    assert (
        bucket["num_reference_images"]
        == len(reference)
        == read_manifest(data)["buckets"]["2"]["counts"]["val"]
    )
    assert bucket["reference"]["bucket"] == "2" and bucket["sampling"]["aspect_ratio"] == 2.0
    expected = fid_from_features(_features(None, _stack(tall_train)), _features(None, _stack(reference)))
    assert bucket["metrics"]["fid"] == pytest.approx(expected, rel=1e-9)
    # Pooled: the whole validation split, of every shape; the record says so (no bucket).
    pooled = score_generated(generated, data, **kw)
    assert pooled["num_reference_images"] == read_manifest(data)["counts"]["val"]
    assert "bucket" not in pooled["reference"] and pooled["metrics"]["fid"] != bucket["metrics"]["fid"]
    with pytest.raises(ValueError, match=r"no aspect-ratio bucket '1\.5' \(it has 0\.5, 1, 2\)"):
        score_generated(generated, data, reference_bucket="1.5", **kw)
