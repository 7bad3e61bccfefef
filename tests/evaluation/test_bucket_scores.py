"""Per-aspect-ratio scores: FID / KID against one bucket of bucketed reference shards, or the pooled split."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import numpy as np
import pytest
import torch
from conftest import stand_in_features
from PIL import Image

from infinity_lit.data.shards import read_manifest
from infinity_lit.evaluation.scoring import score_generated
from infinity_lit.metrics.fid import fid_from_features


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


@pytest.mark.usefixtures("stand_in_inception")
def test_fid_against_one_bucket_and_pooled(bucketed_shards, tmp_path) -> None:
    data, _ = bucketed_shards
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
    expected = fid_from_features(
        stand_in_features(None, _stack(tall_train)), stand_in_features(None, _stack(reference))
    )
    assert bucket["metrics"]["fid"] == pytest.approx(expected, rel=1e-9)
    # Pooled: the whole validation split, of every shape; the record says so (no bucket).
    pooled = score_generated(generated, data, **kw)
    assert pooled["num_reference_images"] == read_manifest(data)["counts"]["val"]
    assert "bucket" not in pooled["reference"] and pooled["metrics"]["fid"] != bucket["metrics"]["fid"]
    with pytest.raises(ValueError, match=r"no aspect-ratio bucket '1\.5' \(it has 0\.5, 1, 2\)"):
        score_generated(generated, data, reference_bucket="1.5", **kw)


def _sample_folder(
    folder, n: int, hw: tuple[int, int], aspect_ratio: float | None, seed: int
) -> torch.Tensor:
    """A sample folder of ``n`` noise PNGs of (h, w) pixels with ``metadata.jsonl`` (prompt, seed and, when
    given, ``aspect_ratio``); returns the images, uint8 (n, 3, h, w)."""
    folder.mkdir()
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, *hw), generator=g, dtype=torch.uint8)
    lines = []
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:06d}.png")
        meta = {"file": f"{i:06d}.png", "index": i, "prompt": f"p{i}", "seed": seed + i, "cfg": 3.0}
        if aspect_ratio is not None:
            meta["aspect_ratio"] = aspect_ratio
        lines.append(json.dumps(meta) + "\n")
    (folder / "metadata.jsonl").write_text("".join(lines))
    return images


def test_pooled_fid_over_folders_of_several_shapes(bucketed_shards, tmp_path, stand_in_inception) -> None:
    """Two sample folders (h/w 2 and 0.5) scored together equal the FID / KID of their concatenated features
    against the whole held-out split, by a list of folders, a parent folder and the command line; the record
    names the buckets pooled and the resizing rule."""
    weights = stand_in_inception
    from infinity_lit.cli import eval as eval_cli
    from infinity_lit.evaluation.images import open_image_set
    from infinity_lit.evaluation.scoring import POOLED_RESIZE, score_folder
    from infinity_lit.metrics.fid import kid_from_features
    from infinity_lit.metrics.inception import INCEPTION_RESIZE

    data, _ = bucketed_shards
    parent = tmp_path / "samples"
    parent.mkdir()
    tall = _sample_folder(parent / "ar2", 7, (32, 16), 2.0, seed=0)
    wide = _sample_folder(parent / "ar0.5", 5, (16, 32), None, seed=100)  # bucket from the image size
    kw = dict(use_feature_cache=False, kid_subsets=3, inception_weights=weights)

    pooled = score_generated([parent / "ar2", parent / "ar0.5"], data, **kw)
    reference = torch.cat([stand_in_features(None, b) for b in open_image_set(data, split="val").batches(50)])
    features = torch.cat([stand_in_features(None, tall), stand_in_features(None, wide)])  # folder order
    assert len(features) == 12 and pooled["num_images"] == 12
    assert pooled["num_reference_images"] == len(reference) == read_manifest(data)["counts"]["val"]
    assert pooled["metrics"]["fid"] == pytest.approx(fid_from_features(features, reference), rel=1e-9)
    kid_mean, kid_std, _ = kid_from_features(features, reference, subsets=3, seed=2020)
    assert pooled["metrics"]["kid_mean"] == pytest.approx(kid_mean, rel=1e-9, abs=1e-12)
    assert pooled["metrics"]["kid_std"] == pytest.approx(kid_std, rel=1e-9, abs=1e-12)
    # Neither folder alone gives the pooled score.
    alone = [score_generated(parent / name, data, **kw)["metrics"]["fid"] for name in ("ar2", "ar0.5")]
    assert all(abs(f - pooled["metrics"]["fid"]) > 1e-6 for f in alone)
    # The record names the folders, their buckets and the resizing rule.
    assert pooled["pooled"]["buckets"] == ["0.5", "2"]
    assert [(f["bucket"], f["num_images"], f["sizes"]) for f in pooled["pooled"]["folders"]] == [
        ("2", 7, ["32x16"]),
        ("0.5", 5, ["16x32"]),
    ]
    assert pooled["generated"] == [str(parent / "ar2"), str(parent / "ar0.5")]
    assert pooled["settings"]["inception_resize"] == POOLED_RESIZE == pooled["pooled"]["resize"]
    assert POOLED_RESIZE.startswith(INCEPTION_RESIZE) and "aspect ratio not kept" in POOLED_RESIZE
    assert pooled["generated_content"]["sizes"] == ["16x32", "32x16"]
    assert pooled["sampling"]["aspect_ratio"] == [2.0, None] and pooled["sampling"]["cfg"] == 3.0
    assert pooled["sampling"]["seed"] == [0, 100]
    assert "bucket" not in pooled["reference"]
    single = score_generated(parent / "ar2", data, **kw)
    assert single["settings"]["inception_resize"] == INCEPTION_RESIZE and "pooled" not in single

    # A parent folder of sample folders pools them in name order ("ar0.5" before "ar2").
    by_parent = score_generated(parent, data, **kw)
    swapped = torch.cat([stand_in_features(None, wide), stand_in_features(None, tall)])
    assert by_parent["generated"] == [str(parent / "ar0.5"), str(parent / "ar2")]
    assert by_parent["metrics"]["fid"] == pytest.approx(fid_from_features(swapped, reference), rel=1e-9)
    kid_mean, _, _ = kid_from_features(swapped, reference, subsets=3, seed=2020)
    assert by_parent["metrics"]["kid_mean"] == pytest.approx(kid_mean, rel=1e-9, abs=1e-12)

    # The command line: --generated given twice pools (instead of the last one winning).
    out = tmp_path / "pooled.json"
    args = ["score", "--generated", str(parent / "ar2"), "--generated", str(parent / "ar0.5")]
    args += ["--reference", str(data), "--out", str(out), "--kid_subsets", "3", "--feature_cache", "false"]
    result = eval_cli.main([*args, "--inception_weights", str(weights)])
    written = json.loads(out.read_text())
    assert written["pooled"]["buckets"] == ["0.5", "2"] and written["num_images"] == 12
    assert result["metrics"]["fid"] == pytest.approx(pooled["metrics"]["fid"], rel=1e-12)
    assert written["metrics"]["kid_mean"] == pytest.approx(pooled["metrics"]["kid_mean"], rel=1e-9, abs=1e-12)

    # One-line errors.
    with pytest.raises(ValueError, match="given twice"):
        score_generated([parent / "ar2", parent / "ar2"], data, **kw)
    with pytest.raises(ValueError, match="inside"):
        score_generated([parent, parent / "ar2"], data, **kw)
    copy = tmp_path / "copy_of_ar2"
    shutil.copytree(parent / "ar2", copy)
    with pytest.raises(ValueError, match=r"holds the same images as .*ar2.* \(a copy\)"):
        score_generated([parent / "ar2", copy], data, **kw)
    with pytest.raises(ValueError, match="give --out"):
        score_folder([parent / "ar2", parent / "ar0.5"], data, kid_subsets=3, inception_weights=weights)
    with pytest.raises(ValueError, match=r"buckets 0\.5, 2 but the reference is its bucket 2"):
        score_generated([parent / "ar2", parent / "ar0.5"], data, reference_bucket="2", **kw)
    Image.new("RGB", (8, 8)).save(parent / "stray.png")
    with pytest.raises(ValueError, match=r"1 image\(s\) outside them \(first: stray\.png\)"):
        score_generated(parent, data, **kw)
