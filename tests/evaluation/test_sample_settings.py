"""What ``eval sample`` and ``eval score`` say when settings do not fit: a folder resumed in another
precision, an aspect ratio that is no template, and folders sampled differently pooled into one score."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from infinity_lit.cli.eval import main
from infinity_lit.evaluation.images import list_images, read_metadata, write_png
from infinity_lit.evaluation.sampling import precision_conflict
from infinity_lit.evaluation.scoring import score_generated


def _sample_args(checkpoint: Path, prompts: Path, out: Path, *extra: str) -> list[str]:
    return ["sample", "--checkpoint", str(checkpoint), "--prompts", str(prompts), "--out", str(out), *extra]


def _edit_metadata(folder: Path, **changes) -> None:
    """Set (or, for a value None, remove) fields on every line of ``folder/metadata.jsonl``."""
    records = read_metadata(folder)
    for rec in records:
        for key, value in changes.items():
            if value is None:
                rec.pop(key, None)
            else:
                rec[key] = value
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


# ------------------------------------------------------------------------------------------------ precision


def test_resuming_in_another_precision_names_the_request_and_what_it_runs_as(
    tmp_path, tiny_generator_ckpt, monkeypatch
):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("red apple\ncat face\n", encoding="utf-8")
    out = tmp_path / "samples"
    args = _sample_args(tiny_generator_ckpt, prompts, out, "--batch_size", "2")
    assert main([*args, "--precision", "bf16"])["written"] == 2
    assert {rec["precision"] for rec in read_metadata(out)} == {"bf16+channels_last"}
    (out / "000001.png").unlink()  # an unfinished folder

    # Where 'auto' resolves to fp32 (no fast bf16 here), it is refused, and the message says so.
    monkeypatch.setattr("infinity_lit.precision.bf16_is_fast", lambda device: False)
    with pytest.raises(ValueError) as refused:
        main([*args, "--precision", "auto"])
    message = str(refused.value)
    assert (
        "(precision: folder has 'bf16+channels_last', requested 'auto', which runs as 'fp32' on cpu here); "
        "pass --precision bf16 to finish it, or choose another --out" in message
    )
    assert "\n" not in message and not (out / "000001.png").exists()
    # A request that runs as what it names is named alone.
    with pytest.raises(ValueError, match=r"requested 'fp32'\); pass --precision bf16 to finish it"):
        main([*args, "--precision", "fp32"])
    # The advice works: --precision bf16 finishes the folder.
    assert main([*args, "--precision", "bf16"])["written"] == 1
    # Where 'auto' resolves to bf16, it resumes the folder as it is.
    monkeypatch.setattr("infinity_lit.precision.bf16_is_fast", lambda device: True)
    (out / "000000.png").unlink()
    assert main([*args, "--precision", "auto"])["written"] == 1
    assert {rec["precision"] for rec in read_metadata(out)} == {"bf16+channels_last"}

    # The other way round: an fp32 folder and 'auto' running as bf16.
    what, advice = precision_conflict("fp32", "auto", "cuda:0")
    assert (
        what
        == "precision: folder has 'fp32', requested 'auto', which runs as 'bf16+channels_last' on cuda:0 here"
    )
    assert advice == "pass --precision fp32 to finish it, or choose another --out"
    # A value that names no precision gets no --precision advice.
    assert precision_conflict("fp16", "fp32", "cpu") == (
        "precision: folder has 'fp16', requested 'fp32'",
        "choose another --out",
    )


# ---------------------------------------------------------------------------------------------- aspect ratio


def test_an_aspect_ratio_that_is_no_template_is_refused_naming_the_nearest(tmp_path, tiny_generator_ckpt):
    from infinity_lit.quantizer.schedules import aspect_ratio_schedule

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("red apple\n", encoding="utf-8")
    out = tmp_path / "samples"
    with pytest.raises(
        ValueError,
        match=r"^no scale schedule template for h/w = 0\.9; the nearest is 1, the templates are 0\.333, ",
    ):
        main([*_sample_args(tiny_generator_ckpt, prompts, out), "--aspect_ratio", "0.9"])
    assert not out.exists()  # refused before a folder is made
    for ratio, nearest in ((0.6, "0.571"), (2.3, "2.5"), (0.3, "0.333")):
        with pytest.raises(ValueError, match=rf"h/w = {ratio}; the nearest is {nearest}, the templates are"):
            aspect_ratio_schedule(ratio, 7)
    assert aspect_ratio_schedule(0.5, 3) == [(1, 1), (2, 2), (2, 4)]  # a template is taken as it is


# ------------------------------------------------------------------------------------------------ pooling


def test_pooling_refuses_folders_sampled_with_different_settings(
    tmp_path, tiny_generator_ckpt, stand_in_inception
):
    weights = stand_in_inception
    reference = tmp_path / "reference"
    reference.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(8):
        write_png(torch.randint(0, 256, (3, 32, 32), generator=g, dtype=torch.uint8), reference / f"{i}.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("red apple\ncat face\nrocket\n", encoding="utf-8")

    def sample(name: str, *extra: str) -> Path:
        out = tmp_path / name
        args = _sample_args(tiny_generator_ckpt, prompts, out, "--precision", "fp32", "--cfg", "2.0", *extra)
        assert main(args)["written"] == 3
        return out

    a = sample("a", "--seed", "0")
    b = sample("b", "--seed", "10")  # other seeds: other images, the same settings
    c = sample("c", "--seed", "20", "--cfg", "3.0")
    kw = dict(use_feature_cache=False, kid_subsets=2, inception_weights=weights)

    # Folders sampled alike pool; the shared settings are recorded once, the seeds per folder.
    pooled = score_generated([a, b], reference, **kw)
    assert pooled["num_images"] == 6
    sampling = pooled["sampling"]
    shared = summary_of(a)
    for key in ("cfg", "tau", "top_p", "precision", "checkpoint", "generator_weights_sha256", "use_ema"):
        assert sampling[key] == shared[key] and not isinstance(sampling[key], list), key
    assert sampling["cfg"] == 2.0 and sampling["precision"] == "fp32"
    assert sampling["seed"] == [0, 10]
    assert not any("do not record" in w for w in pooled["warnings"])

    # Another cfg, really sampled: refused, naming the setting, both values, both folders, what to do.
    with pytest.raises(ValueError) as refused:
        score_generated([a, c], reference, **kw)
    message = str(refused.value)
    assert message.startswith(
        f"pooled folders sampled with different cfg: 2.0 in {str(a)!r}, 3.0 in {str(c)!r};"
    )
    assert "pool only folders sampled alike" in message and "score each on its own" in message
    assert "\n" not in message
    # The same through the command line (--generated twice).
    args = ["score", "--generated", str(a), "--generated", str(c), "--reference", str(reference)]
    args += ["--out", str(tmp_path / "pooled.json"), "--inception_weights", str(weights)]
    with pytest.raises(ValueError, match=r"different cfg: 2\.0 in"):
        main(args)
    assert not (tmp_path / "pooled.json").exists()

    def variant(name: str, **changes) -> Path:
        """A copy of ``b`` (other images than ``a``'s: the copy check does not answer), metadata edited."""
        out = shutil.copytree(b, tmp_path / name)
        _edit_metadata(out, **changes)
        return out

    assert {p.read_bytes() for p in list_images(a)}.isdisjoint(p.read_bytes() for p in list_images(b))
    checks = {
        "precision": ("fp32", "bf16+channels_last"),
        "tau": (1.0, 0.5),
        "top_p": (1.0, 0.9),
        "generator_weights_sha256": (shared["generator_weights_sha256"], "0" * 64),
        "checkpoint_step": (shared["checkpoint_step"], 1234),
    }
    for key, (before, after) in checks.items():
        other = variant(f"b_{key}", **{key: after})
        with pytest.raises(ValueError) as refused:
            score_generated([a, other], reference, **kw)
        expected = f"different {key}: {before!r} in {str(a)!r}, {after!r} in {str(other)!r};"
        assert str(refused.value).startswith(f"pooled folders sampled with {expected}"), key

    # What may differ between aspect-ratio buckets, or says only where a file was read, does not refuse.
    moved = variant("b_moved", checkpoint="/elsewhere/generator.ckpt", prompts="/elsewhere/prompts.txt")
    buckets = variant("b_bucket", aspect_ratio=2.0, schedule=[[1, 1], [2, 1]])
    for other in (moved, buckets):
        assert score_generated([a, other], reference, **kw)["num_images"] == 6
    # Without the weights' digests the paths are what is known: another path is refused.
    no_digest = variant("b_no_digest", generator_weights_sha256=None, checkpoint="/elsewhere/generator.ckpt")
    _edit_metadata(a_copy := shutil.copytree(a, tmp_path / "a_no_digest"), generator_weights_sha256=None)
    with pytest.raises(ValueError, match="different checkpoint: "):
        score_generated([a_copy, no_digest], reference, **kw)

    # A setting one folder does not record cannot be compared: pooled, with a warning naming it.
    unrecorded = variant("b_unrecorded", precision=None)
    record = score_generated([a, unrecorded], reference, **kw)
    (warning,) = [w for w in record["warnings"] if "do not record" in w]
    assert f"{str(unrecorded)!r} do not record precision (it is 'fp32' in {str(a)!r})" in warning
    assert record["sampling"]["precision"] == ["fp32", None]

    # A copy of a folder with identical settings is still refused as a copy.
    copy = shutil.copytree(a, tmp_path / "a_copy")
    with pytest.raises(ValueError, match=r"holds the same images as .*\(a copy\)"):
        score_generated([a, copy], reference, **kw)


def summary_of(folder: Path) -> dict:
    from infinity_lit.evaluation.scoring import summarize_settings

    return summarize_settings(read_metadata(folder))
