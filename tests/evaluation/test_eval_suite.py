"""The evaluation suite end to end on real OpenMoji images: sampling to folders (resumable), ``eval score``,
``eval recon``, ``eval report`` and the TensorBoard helpers."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from infinity_lit.cli.eval import main
from infinity_lit.evaluation.images import list_images, read_image, read_metadata, write_png
from infinity_lit.evaluation.sampling import read_prompts, sample_to_folder
from infinity_lit.evaluation.tensorboard import event_dirs, per_scale_values, read_scalars
from infinity_lit.metrics.clip_score import CLIP_NOT_COMPUTED, ENV_CLIP_WEIGHTS
from infinity_lit.metrics.inception import ENV_CACHE, ENV_WEIGHTS
from infinity_lit.metrics.reconstruction import psnr
from infinity_lit.training.callbacks import log_hparams_with_metrics

# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No user CLIP weights and a private cache folder (feature caches) for every test."""
    monkeypatch.delenv(ENV_CLIP_WEIGHTS, raising=False)
    monkeypatch.delenv(ENV_WEIGHTS, raising=False)
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from infinity_lit.metrics.clip_score import _import_clip

    clip = _import_clip()
    torch.manual_seed(0)
    model = clip.model.CLIP(32, 32, 1, 64, 16, 77, 49408, 64, 1, 1)
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return path


def make_sample_folder(
    openmoji_shards: Path, out: Path, n: int = 8, cfg: float = 4.0, offset: int = 0
) -> Path:
    """A sample folder as ``eval sample`` writes it, from real OpenMoji training images and captions
    (training samples ``offset`` … ``offset + n - 1``)."""
    from itertools import islice

    from infinity_lit.data.shards import image_to_uint8, iter_samples

    out.mkdir(parents=True)
    with open(out / "metadata.jsonl", "w", encoding="utf-8") as meta:
        samples = islice(iter_samples(openmoji_shards, "train"), offset, offset + n)
        for i, (_, image, caption) in enumerate(samples):
            write_png(image_to_uint8(image), out / f"{i:06d}.png")
            rec = {"file": f"{i:06d}.png", "index": i, "prompt": caption, "image_seed": 7 + i}
            rec |= {"checkpoint": "gen.ckpt", "cfg": cfg, "tau": 1.0, "top_p": 1.0, "seed": 7}
            meta.write(json.dumps(rec) + "\n")
    return out


def test_eval_score_warns_when_the_image_sizes_differ(tmp_path, openmoji_shards, inception_weights, capsys):
    from PIL import Image

    gen = make_sample_folder(openmoji_shards, tmp_path / "samples", n=4)
    for png in gen.glob("*.png"):  # generated at 30x30, reference shards 32x32
        Image.open(png).resize((30, 30)).save(png)
    args = ["score", "--generated", str(gen), "--reference", str(openmoji_shards), "--max_reference", "4"]
    args += [
        "--inception_weights",
        str(inception_weights),
        "--kid_subsets",
        "2",
        "--out",
        str(tmp_path / "m.json"),
    ]
    main(args)
    rec = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    (warning,) = [w for w in rec["warnings"] if "resized to 299x299" in w]
    assert "30x30" in warning and "32x32" in warning
    assert (
        "warning: the generated images are 30x30 and the reference images 32x32 (height x width)"
        in capsys.readouterr().err
    )


# ------------------------------------------------------------------------------------------------ sampling


def fake_sampler(calls: list):
    """A deterministic stand-in for the generator: pixels depend only on (prompt, seed)."""

    def sample_fn(prompts: list[str], seeds: list[int]) -> torch.Tensor:
        calls.append(list(seeds))
        out = []
        for prompt, seed in zip(prompts, seeds):
            g = torch.Generator().manual_seed(seed * 1000 + len(prompt))
            out.append(torch.rand(3, 8, 8, generator=g) * 2 - 1)
        return torch.stack(out)

    return sample_fn


def test_sample_to_folder_is_resumable_and_deterministic(tmp_path):
    prompts = [f"prompt {i}" for i in range(5)]
    calls: list = []
    out = tmp_path / "samples"
    result = sample_to_folder(fake_sampler(calls), prompts, out, seed=3, batch_size=2, settings={"cfg": 2.0})
    assert result == {"written": 5, "skipped": 0, "total": 5}
    assert calls == [[3, 4], [5, 6], [7]]
    assert [p.name for p in list_images(out)] == [f"{i:06d}.png" for i in range(5)]
    records = read_metadata(out)
    assert [r["prompt"] for r in records] == prompts and all(
        r["cfg"] == 2.0 and r["seed"] == 3 for r in records
    )
    # Saved as uint8 [0, 255] from [-1, 1]: check one image against the sampler's own output.
    expected = ((fake_sampler([])(["prompt 2"], [5])[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    assert torch.equal(read_image(out / "000002.png"), expected)

    before = read_image(out / "000003.png")
    calls.clear()
    assert (
        sample_to_folder(fake_sampler(calls), prompts, out, seed=3, batch_size=2, settings={"cfg": 2.0})[
            "written"
        ]
        == 0
    )
    assert calls == []
    (out / "000003.png").unlink()
    sample_to_folder(fake_sampler(calls), prompts, out, seed=3, batch_size=4, settings={"cfg": 2.0})
    assert calls == [[6]]  # only the missing image, with its own seed
    assert torch.equal(read_image(out / "000003.png"), before)

    with pytest.raises(ValueError, match="other settings"):
        sample_to_folder(fake_sampler(calls), prompts, out, seed=3, settings={"cfg": 3.0})
    with pytest.raises(ValueError, match="other settings"):
        sample_to_folder(fake_sampler(calls), prompts, out, seed=4, settings={"cfg": 2.0})
    with pytest.raises(ValueError, match="prompt 1 is now"):
        changed = ["prompt 0", "other", *prompts[2:]]
        sample_to_folder(fake_sampler(calls), changed, out, seed=3, settings={"cfg": 2.0})
    # fewer prompts than images in the folder: scoring it would count the extra ones
    with pytest.raises(ValueError, match=r"holds 3 more images than the 2 asked for \(images 2…4\)"):
        sample_to_folder(fake_sampler(calls), prompts[:2], out, seed=3, settings={"cfg": 2.0})


def test_read_prompts_formats(tmp_path):
    (tmp_path / "p.txt").write_text("# comment\na cat\n\n  a dog  \n", encoding="utf-8")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat"}\n{"caption": "a dog"}\n', encoding="utf-8")
    (tmp_path / "p.json").write_text('["a cat", "a dog"]', encoding="utf-8")
    for name in ("p.txt", "p.jsonl", "p.json"):
        assert read_prompts(tmp_path / name) == ["a cat", "a dog"]
    (tmp_path / "empty.txt").write_text("\n# only a comment\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts(tmp_path / "empty.txt")


def test_read_prompts_txt_format(tmp_path):
    r"""UTF-8, one prompt per line, stripped; blank lines and '#' comment lines dropped; '\#' escapes."""
    lines = [
        "\ufeff# a comment on the first line, after a byte-order mark",
        "  a café at night  ",
        "",
        "   ",
        "   # an indented comment",
        r"\#1 on the chart",
        r"\\# starts with a backslash",
        r"\plain backslash kept",
        "a #hashtag inside stays",
        "😀 grinning face",
    ]
    (tmp_path / "p.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert read_prompts(tmp_path / "p.txt") == [
        "a café at night",
        "#1 on the chart",
        r"\# starts with a backslash",
        r"\plain backslash kept",
        "a #hashtag inside stays",
        "😀 grinning face",
    ]
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="UTF-8"):
        read_prompts(tmp_path / "latin1.txt")


def test_eval_sample_with_tiny_generator(tmp_path, tiny_generator_ckpt, tiny_tokenizer_ckpt, monkeypatch):
    import shutil

    (tmp_path / "prompts.txt").write_text("a red apple\na smiling face\na cat\n", encoding="utf-8")

    out = tmp_path / "samples"
    monkeypatch.chdir(tiny_generator_ckpt.parent)  # the checkpoint named by a relative path
    args = ["sample", "--checkpoint", tiny_generator_ckpt.name, "--prompts", str(tmp_path / "prompts.txt")]
    args += ["--out", str(out), "--cfg", "2.0", "--seed", "5", "--batch_size", "2"]
    assert main(args) == {"written": 3, "skipped": 0, "total": 3}
    images = [read_image(p) for p in list_images(out)]
    assert len(images) == 3 and all(im.shape == (3, 32, 32) for im in images)
    records = read_metadata(out)
    assert [r["image_seed"] for r in records] == [5, 6, 7] and all(r["cfg"] == 2.0 for r in records)
    # The files that were read, as absolute paths: not as typed, nor as the generator recorded them.
    assert {r["checkpoint"] for r in records} == {str(tiny_generator_ckpt.resolve())}
    assert {r["tokenizer_checkpoint"] for r in records} == {str(tiny_tokenizer_ckpt.resolve())}
    assert {r["prompts"] for r in records} == {str((tmp_path / "prompts.txt").resolve())}
    # The same weights from another place resume the folder: the content hashes agree, the paths need not.
    moved = shutil.copy(tiny_generator_ckpt, tmp_path / "moved.ckpt")
    (out / "000001.png").unlink()
    args[2] = str(moved)
    assert main(args)["written"] == 1
    assert torch.equal(read_image(out / "000001.png"), images[1])  # same seed, same pixels


# ------------------------------------------------------------------------------------------------ score


def test_eval_score_on_openmoji(tmp_path, openmoji_shards, inception_weights, tiny_clip, monkeypatch):
    import torch_fidelity

    from infinity_lit.data.shards import image_to_uint8, iter_samples

    gen = make_sample_folder(openmoji_shards, tmp_path / "samples", n=6)
    out = tmp_path / "metrics.json"
    args = ["score", "--generated", str(gen), "--reference", str(openmoji_shards), "--max_reference", "8"]
    args += ["--inception_weights", str(inception_weights), "--kid_subsets", "10", "--out", str(out)]
    main(args)
    rec = json.loads(out.read_text(encoding="utf-8"))
    assert rec["num_images"] == 6 and rec["num_reference_images"] == 8
    assert rec["metrics"]["clip_score"] == CLIP_NOT_COMPUTED
    assert (
        rec["sampling"]["cfg"] == 4.0
        and rec["sampling"]["seed"] == 7
        and rec["sampling"]["checkpoint"] == "gen.ckpt"
    )
    assert rec["weights"]["inception"] == str(inception_weights) and rec["weights"]["clip"] is None
    assert any("fewer than the feature dimension" in w for w in rec["warnings"])
    assert not any("resized to 299x299" in w for w in rec["warnings"])  # both sets 32x32
    assert rec["settings"]["kid_subset_size"] == 6
    assert rec["reference"] == {
        "kind": "shards",
        "path": str(openmoji_shards),
        "split": "val",
        "max_images": 8,
    }

    # The same FID from torch-fidelity reading the folders itself (the reference written out as PNGs).
    ref_dir = tmp_path / "reference"
    ref_dir.mkdir()
    for i, (_, image, _) in zip(range(8), iter_samples(openmoji_shards, "val")):
        write_png(image_to_uint8(image), ref_dir / f"{i:04d}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = torch_fidelity.calculate_metrics(
            input1=str(gen),
            input2=str(ref_dir),
            fid=True,
            cuda=False,
            cache=False,
            save_cpu_ram=True,
            verbose=False,
            feature_extractor_weights_path=str(inception_weights),
        )
    assert rec["metrics"]["fid"] == pytest.approx(expected["frechet_inception_distance"], rel=1e-4)
    assert rec["metrics"]["fid"] > 1

    # Second run: Inception features come from the cache (loading the network would fail), and with CLIP
    # weights the CLIP score is a number.
    def no_inception(*a, **k):
        raise AssertionError("features should come from the cache")

    monkeypatch.setattr("infinity_lit.evaluation.scoring.load_inception", no_inception)
    main([*args, "--clip_weights", str(tiny_clip)])
    rec2 = json.loads(out.read_text(encoding="utf-8"))
    assert rec2["metrics"]["fid"] == pytest.approx(rec["metrics"]["fid"], rel=1e-12)
    assert isinstance(rec2["metrics"]["clip_score"], float) and 0 <= rec2["metrics"]["clip_score"] <= 100
    assert rec2["weights"]["clip"] == str(tiny_clip)


def test_eval_score_rejects_tiny_sets(tmp_path, inception_weights):
    one = tmp_path / "one"
    one.mkdir()
    write_png(torch.zeros(3, 8, 8, dtype=torch.uint8), one / "a.png")
    with pytest.raises(ValueError, match="at least 2 images"):
        main(
            [
                "score",
                "--generated",
                str(one),
                "--reference",
                str(one),
                "--inception_weights",
                str(inception_weights),
            ]
        )


def _truncated_jpeg(path: Path) -> Path:
    """A valid 32×32 JPEG cut to half its bytes."""
    import io

    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def _random_pngs(folder: Path, names: list[str], seed: int = 0, size: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = []
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        images.append(torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g))
        write_png(images[-1], folder / name)
    return images


def _fake_inception(monkeypatch) -> list[int]:
    """Replace Inception in ``scoring`` by per-image channel means and standard deviations ((N, 6) float64);
    returns the list of batch sizes it is called with (empty while features come from the cache)."""

    def features(_model, batch, _batch_size=50):
        x = batch.double()
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)

    seen: list[int] = []
    monkeypatch.setattr("infinity_lit.evaluation.scoring.load_inception", lambda *a, **k: object())
    monkeypatch.setattr(
        "infinity_lit.evaluation.scoring.inception_features",
        lambda m, b, bs=50: seen.append(len(b)) or features(m, b, bs),
    )
    return seen


def test_eval_score_skips_and_records_unreadable_reference_images(tmp_path, monkeypatch):
    """A truncated JPEG in a reference sub-folder used to crash ``eval score`` without naming the file.

    Inception is replaced by per-image channel means and standard deviations (the network is not what is
    tested here: which images are read, and what the record says about the others).
    """
    from infinity_lit.evaluation.scoring import score_generated

    seen = _fake_inception(monkeypatch)
    gen = tmp_path / "samples"
    _random_pngs(gen, ["000000.png", "000001.png", "000002.png"], seed=1)
    ref = tmp_path / "reference"
    _random_pngs(ref, ["a.png", "b.png", "sub/c.png"], seed=2)
    _truncated_jpeg(ref / "sub" / "cut.jpg")
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"stand-in")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\) in .*reference: sub/cut\.jpg \("):
        record = score_generated(gen, ref, inception_weights=weights, use_feature_cache=False)
    assert record["num_images"] == 3 and record["num_reference_images"] == 3  # sub/c.png is read
    assert sum(seen) == 6
    assert list(record["unreadable_images"]["reference"]) == ["sub/cut.jpg"]
    assert "truncated" in record["unreadable_images"]["reference"]["sub/cut.jpg"]
    assert record["unreadable_images"]["generated"] == {}
    assert any("sub/cut.jpg" in w for w in record["warnings"])
    assert record["reference_content"]["images"] == 3 and record["reference_content"]["format"] == "PNG files"


def test_the_feature_cache_follows_the_pixels_not_the_file_names_and_times(tmp_path, monkeypatch):
    """Inception features are cached by what a set holds: a generated image rewritten with other pixels
    under the same name, size and modification time is scored afresh; a copied set reuses the cache."""
    import shutil

    import numpy as np
    from PIL import Image

    from infinity_lit.evaluation.scoring import score_generated

    seen = _fake_inception(monkeypatch)
    rng = np.random.default_rng(0)

    def save(path: Path) -> None:  # uncompressed: the file size depends on the image size alone
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path, compress_level=0)

    gen, ref = tmp_path / "samples", tmp_path / "reference"
    for name in ("000000.png", "000001.png", "000002.png"):
        save(gen / name)
        save(ref / name)
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"stand-in")
    kw = {"inception_weights": weights, "feature_cache_dir": tmp_path / "cache"}
    first = score_generated(gen, ref, **kw)
    assert sum(seen) == 6
    seen.clear()
    assert score_generated(gen, ref, **kw)["metrics"]["fid"] == first["metrics"]["fid"] and seen == []

    path = gen / "000001.png"
    before = path.stat()
    save(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    seen.clear()
    changed = score_generated(gen, ref, **kw)
    assert seen == [3]  # the generated set again; the reference from the cache
    assert changed["metrics"]["fid"] != first["metrics"]["fid"]

    shutil.copytree(gen, tmp_path / "copy")
    seen.clear()
    assert score_generated(tmp_path / "copy", ref, **kw)["metrics"]["fid"] == changed["metrics"]["fid"]
    assert seen == []


# ------------------------------------------------------------------------------------------------ recon


def test_eval_recon_on_openmoji(tmp_path, openmoji_shards, inception_weights, tiny_tokenizer_ckpt):
    from infinity_lit.data.shards import load_split
    from infinity_lit.tokenizer import load_tokenizer

    ckpt = tiny_tokenizer_ckpt
    out = tmp_path / "recon"
    args = ["recon", "--tokenizer", str(ckpt), "--data", str(openmoji_shards), "--out", str(out)]
    args += ["--max_images", "6", "--batch_size", "4", "--inception_weights", str(inception_weights)]
    main(args)
    path = out / "metrics.json"
    rec = json.loads(path.read_text(encoding="utf-8"))
    m = rec["metrics"]
    assert rec["kind"] == "reconstruction" and rec["num_images"] == 6
    assert sorted(m["psnr_per_scale"]) == ["1", "2", "3"] and m["psnr"] == m["psnr_per_scale"]["3"]
    assert m["rfid"] > 0 and any("fewer than the feature dimension" in w for w in rec["warnings"])
    # Which weights were scored, by content: the digest of the checkpoint's tokenizer weights.
    from infinity_lit.checkpoints import TOKENIZER, read_checkpoint, weights_digest

    assert rec["tokenizer"]["weights_sha256"] == weights_digest(read_checkpoint(ckpt, TOKENIZER).weights())
    assert rec["tokenizer"]["path"] == str(ckpt.resolve())

    # Independent: the tokenizer's own progressive reconstruction of the same 6 validation images.
    images, _, _ = load_split(openmoji_shards, "val", 32)
    x = images[:6].float() / 127.5 - 1
    tok = load_tokenizer(ckpt)
    for k in (1, 2, 3):
        assert m["psnr_per_scale"][str(k)] == pytest.approx(
            float(psnr(tok.reconstruct(x, num_scales=k).clamp(-1, 1), x)), abs=1e-4
        )

    mtime = path.stat().st_mtime_ns
    main(args)  # same inputs: nothing recomputed
    assert path.stat().st_mtime_ns == mtime


def test_eval_recon_on_a_folder_reads_subfolders_and_records_unreadable(tmp_path, tiny_tokenizer_ckpt):
    from infinity_lit.evaluation.recon import reconstruction_record

    data = tmp_path / "photos"
    _random_pngs(data, ["x.png", "trip/y.png", "trip/day2/z.png"])
    _truncated_jpeg(data / "trip" / "cut.jpg")
    (data / "notes.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image\(s\)") as caught:
        record = reconstruction_record(tiny_tokenizer_ckpt, data, tmp_path / "recon", rfid=False)
    message = next(str(w.message) for w in caught if "unreadable" in str(w.message))
    assert "trip/cut.jpg (" in message and "notes.png (" in message
    assert record["num_images"] == 3
    assert list(record["unreadable_images"]) == ["notes.png", "trip/cut.jpg"]  # reading order
    assert any("trip/cut.jpg" in w for w in record["warnings"])
    written = json.loads((tmp_path / "recon" / "metrics.json").read_text(encoding="utf-8"))
    assert written["unreadable_images"] == record["unreadable_images"]


# ------------------------------------------------------------------------------------------------ TensorBoard


def write_run(root: Path, scale: float) -> None:
    """A run folder as training writes it: Lightning TensorBoard events with curves and per-scale scalars."""
    from lightning.pytorch.loggers import TensorBoardLogger

    logger = TensorBoardLogger(save_dir=str(root), name="", version="version_0", default_hp_metric=False)
    for step in range(0, 50, 10):
        logger.log_metrics({"train/loss": scale * np.exp(-step / 20), "train/lr": 1e-4}, step=step)
    for k in range(1, 4):
        logger.log_metrics(
            {f"val/psnr_scale_{k}": 10 + scale * k, f"val/bit_acc_scale_{k}": 0.5 + 0.1 * k}, step=40
        )
    logger.finalize("success")


def hparams_experiment(logdir: Path):
    """The HParams table as TensorBoard's own HParams backend builds it for ``logdir``."""
    from tensorboard import context
    from tensorboard.backend.event_processing import plugin_event_multiplexer
    from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    tb = base_plugin.TBContext(data_provider=MultiplexerDataProvider(mux, str(logdir)), logdir=str(logdir))
    ctx, rc = backend_context.Context(tb), context.RequestContext()
    return ctx.experiment_from_metadata(
        rc, "", True, ctx.hparams_metadata(rc, ""), ctx.hparams_from_data_provider(rc, "", 0)
    )


def test_log_hparams_with_metrics_fills_the_hparams_tab(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    study = tmp_path / "study"
    for arm, flip, fid in (("arm_a", 0.0, 9.76), ("arm_b", 0.3, 3.33)):
        logger = TensorBoardLogger(str(study), name=arm, version="version_0", default_hp_metric=False)
        logger.log_hyperparams({"max_flip_prob": flip})  # what the Trainer does at fit start
        for step in range(3):
            logger.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
        logged = log_hparams_with_metrics(
            logger,
            {
                "_instantiator": "lightning.pytorch.cli.instantiate_module",  # internal: left out
                "model": {"max_flip_prob": flip, "scale_schedule": [[1, 1], [2, 2]]},
                "seed": 0,
            },
            {"eval": {"fid": fid, "clip_score": CLIP_NOT_COMPUTED}, "psnr": 21.0},
            step=2,
        )
        logger.finalize("success")
        assert logged == {"eval/fid": fid, "psnr": 21.0}

    experiment = hparams_experiment(study)
    assert sorted(h.name for h in experiment.hparam_infos) == [
        "model/max_flip_prob",
        "model/scale_schedule",
        "seed",
    ]
    assert {m.name.tag for m in experiment.metric_infos} == {"eval/fid", "psnr", "train/loss"}

    acc = EventAccumulator(str(study / "arm_b" / "version_0"))
    acc.Reload()
    start = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    )
    hp = start.session_start_info.hparams
    assert hp["model/max_flip_prob"].number_value == pytest.approx(0.3)
    assert hp["model/scale_schedule"].string_value == "[[1, 1], [2, 2]]"
    assert read_scalars(study / "arm_b" / "version_0")["eval/fid"] == [(2, pytest.approx(3.33))]

    # A plain folder works too; a logger whose hp_metric experiment would hide the metrics gets a warning.
    log_hparams_with_metrics(tmp_path / "plain", {"a": 1}, {"fid": 1.0})
    assert read_scalars(tmp_path / "plain")["fid"] == [(0, 1.0)]
    with pytest.warns(UserWarning, match="default_hp_metric"):
        log_hparams_with_metrics(TensorBoardLogger(str(tmp_path / "hp"), name="x"), {"a": 1}, {"fid": 1.0})
    with pytest.raises(ValueError, match="no numeric metric"):
        log_hparams_with_metrics(tmp_path / "plain", {"a": 1}, {"clip_score": CLIP_NOT_COMPUTED})


def test_read_scalars_and_per_scale(tmp_path):
    write_run(tmp_path / "run", scale=2.0)
    dirs = event_dirs(tmp_path)
    assert dirs == [tmp_path / "run" / "version_0"]
    scalars = read_scalars(dirs[0])
    assert [s for s, _ in scalars["train/loss"]] == [0, 10, 20, 30, 40]
    assert scalars["train/loss"][0][1] == pytest.approx(2.0)
    per = per_scale_values(scalars)
    assert per["val/psnr"] == pytest.approx({1: 12.0, 2: 14.0, 3: 16.0})
    assert per["val/bit_acc"] == pytest.approx({1: 0.6, 2: 0.7, 3: 0.8})


# ------------------------------------------------------------------------------------------------ report


def test_eval_report_on_two_runs(tmp_path, openmoji_shards, inception_weights):
    runs = []
    for offset, (name, scale, cfg) in enumerate((("arm_a", 1.0, 4.0), ("arm_b", 3.0, 2.0))):
        root = tmp_path / "study" / name
        write_run(root, scale)
        samples = make_sample_folder(
            openmoji_shards, root / "eval" / "samples", n=4, cfg=cfg, offset=4 * offset
        )
        args = ["score", "--generated", str(samples), "--reference", str(openmoji_shards)]
        main(
            [
                *args,
                "--inception_weights",
                str(inception_weights),
                "--kid_subsets",
                "5",
                "--max_reference",
                "8",
            ]
        )
        runs.append(root)
    # A reconstruction record with per-scale PSNR, as eval recon writes it.
    recon = {"kind": "reconstruction", "num_images": 6, "metrics": {"psnr": 21.5, "ssim": 0.7, "rfid": 3.25}}
    recon["metrics"]["psnr_per_scale"] = {"1": 14.0, "2": 18.0, "3": 21.5}
    (runs[0] / "eval" / "recon").mkdir(parents=True)
    (runs[0] / "eval" / "recon" / "metrics.json").write_text(json.dumps(recon), encoding="utf-8")

    out = tmp_path / "report"
    html_path, md_path = main(["report", *map(str, runs), "--out", str(out), "--title", "BSC study"])
    page = html_path.read_text(encoding="utf-8")
    md = md_path.read_text(encoding="utf-8")
    fids = [json.loads((r / "eval" / "samples" / "metrics.json").read_text())["metrics"]["fid"] for r in runs]
    assert f"{fids[0]:.2f}" != f"{fids[1]:.2f}"  # different samples, different FIDs
    for text in (page, md):
        assert "BSC study" in text and "arm_a" in text and "arm_b" in text
        for fid in fids:
            assert f"{fid:.2f}" in text
        assert "21.50" in text and "3.25" in text and "0.7000" in text  # recon row
        assert CLIP_NOT_COMPUTED in text
        assert "fewer than the feature dimension" in text
    # Self-contained: every picture inline, nothing fetched from elsewhere.
    assert page.count("data:image/png;base64,") >= 2 + 2 * 4  # curves, per-scale, 2 × 4 samples
    assert not re.search(r"""src=['"](?!data:)""", page)
    for name in re.findall(r"\(assets/([^)]+)\)", md):
        assert (out / "assets" / name).is_file()
    assert (out / "assets" / "per_scale.png").is_file() and (out / "assets" / "curves_0.png").is_file()


def _prompt_folder(out: Path, prompts: list[str]) -> Path:
    """A sample folder whose image i is a flat colour i and whose prompts are ``prompts``."""
    out.mkdir(parents=True)
    with open(out / "metadata.jsonl", "w", encoding="utf-8") as meta:
        for i, prompt in enumerate(prompts):
            write_png(torch.full((3, 8, 8), 10 * i, dtype=torch.uint8), out / f"{i:06d}.png")
            meta.write(json.dumps({"file": f"{i:06d}.png", "index": i, "prompt": prompt}) + "\n")
    return out


def test_sample_grid_rows_pair_images_of_the_same_prompt(tmp_path):
    from infinity_lit.evaluation.report import collect_run, sample_table

    _prompt_folder(tmp_path / "a" / "samples", ["cat", "dog", "cat", "sun"])
    _prompt_folder(tmp_path / "b" / "samples", ["dog", "cat", "moon", "cat"])
    columns, rows, warnings = sample_table([collect_run(tmp_path / "a"), collect_run(tmp_path / "b")])
    assert columns == ["a/samples", "b/samples"]
    by_label = {label: [p.name if p else None for p in paths] for label, paths in rows}
    # Position i in one list is not position i in the other: rows pair by prompt (and its occurrence).
    assert by_label == {
        "cat": ["000000.png", "000001.png"],
        "dog": ["000001.png", "000000.png"],
        "cat (#2)": ["000002.png", "000003.png"],
        "sun": ["000003.png", None],
        "moon": [None, "000002.png"],
    }
    assert [label for label, _ in rows] == ["cat", "dog", "cat (#2)", "sun", "moon"]
    assert len(warnings) == 1 and "b/samples was sampled from other prompts than a/samples" in warnings[0]
    same = sample_table([collect_run(tmp_path / "a"), collect_run(tmp_path / "a", name="again")])
    assert same[2] == []  # the same prompts: no warning


def test_training_curves_give_every_run_one_colour_and_a_legend_entry(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import TensorBoardLogger

    from infinity_lit.evaluation import report

    for name, tags in (("tok", ["train/l1"]), ("gen", ["train/bit_acc", "train/l1"])):
        logger = TensorBoardLogger(
            save_dir=str(tmp_path / name), name="", version="v", default_hp_metric=False
        )
        for step in range(3):
            logger.log_metrics({tag: float(step) for tag in tags}, step=step)
        logger.finalize("success")
    figures = []
    monkeypatch.setattr(report, "figure_png", lambda fig: figures.append(fig) or b"png")
    report.plot_curves([report.collect_run(tmp_path / "tok"), report.collect_run(tmp_path / "gen")])
    (fig,) = figures
    # The first panel (train/bit_acc) has only "gen"; the legend still names both runs.
    assert sorted(t.get_text() for t in fig.legends[0].get_texts()) == ["gen/v", "tok/v"]
    colour_of: dict[str, set] = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            colour_of.setdefault(line.get_label(), set()).add(line.get_color())
    assert all(len(c) == 1 for c in colour_of.values()), colour_of  # one colour per run in every panel
    assert colour_of["gen/v"] != colour_of["tok/v"]


# ------------------------------------------------------------------------------------------------ configs

EVAL_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "eval" / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", EVAL_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_eval_configs_parse(path):
    """Every evaluation config parses as its subcommand (the folder name) with every required option set."""
    from infinity_lit.cli.eval import COMMANDS, build_parser

    command = path.parent.name
    assert command in COMMANDS
    cfg = build_parser().parse_args([command, "--config", str(path)])
    assert cfg.command == command
    if command == "sample":
        assert cfg.sample.cfg == 4.0 and cfg.sample.tau == 1.0  # the reference evaluation settings
        assert (cfg.sample.prompts is None) != (cfg.sample.captions_from is None)
        if cfg.sample.prompts is not None:
            assert len(read_prompts(Path(__file__).resolve().parents[2] / cfg.sample.prompts)) == 64


def test_image_set_content_follows_pixels_not_places(tmp_path, openmoji_shards):
    import hashlib
    import shutil

    from infinity_lit.evaluation.images import open_image_set

    folder = tmp_path / "a"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 8, 12), dtype=torch.uint8, generator=g) for _ in range(3)]
    for i, im in enumerate(images):
        write_png(im, folder / f"{i:06d}.png")
    content = open_image_set(folder).content()
    # Hand-computed: key, size and the raw uint8 bytes of each image, in name order.
    digest = hashlib.sha256()
    for i, im in enumerate(images):
        digest.update(f"{i:06d}.png".encode() + b"\x00" + b"8x12" + b"\x00")
        digest.update(im.numpy().tobytes())
    assert content == {"sha256": digest.hexdigest(), "images": 3, "sizes": ["8x12"], "format": "PNG files"}
    # A copy elsewhere holds the same; one changed pixel, or a smaller selection, does not.
    shutil.copytree(folder, tmp_path / "b")
    assert open_image_set(tmp_path / "b").content() == content
    assert open_image_set(folder, max_images=2).content()["sha256"] != content["sha256"]
    changed = images[1].clone()
    changed[0, 0, 0] ^= 1
    write_png(changed, tmp_path / "b" / "000001.png")
    assert open_image_set(tmp_path / "b").content()["sha256"] != content["sha256"]
    shards = open_image_set(openmoji_shards, split="val").content()
    assert shards["format"] == "webdataset shards" and shards["images"] == len(
        open_image_set(openmoji_shards)
    )


def test_image_set_folder_is_recursive_and_skips_unreadable_once(tmp_path):
    from infinity_lit.evaluation.images import open_image_set

    folder = tmp_path / "set"
    images = _random_pngs(folder, ["000000.png", "000001.png", "sub/000000.png", "sub/deep/a.png"], size=8)
    _truncated_jpeg(folder / "sub" / "cut.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / ".hidden.png").write_bytes(b"ignored")
    records = [{"file": "000001.png", "prompt": "flat"}, {"file": "sub/000000.png", "prompt": "nested"}]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    image_set = open_image_set(folder)
    assert len(image_set) == 6  # files, before any is decoded
    with pytest.warns(UserWarning) as caught:
        items = list(image_set.iter_items())
    assert [str(w.message) for w in caught] == [
        f"skipped 2 unreadable image(s) in {folder}: broken.png ({image_set.unreadable['broken.png']}); "
        f"sub/cut.jpg ({image_set.unreadable['sub/cut.jpg']})"
    ]
    # Keys: relative paths (flat names as before), sorted by path parts; prompts by metadata "file".
    assert [(k, c) for k, _, c in items] == [
        ("000000.png", None),
        ("000001.png", "flat"),
        ("sub/000000.png", "nested"),
        ("sub/deep/a.png", None),
    ]
    assert all(torch.equal(im, ref) for (_, im, _), ref in zip(items, images))
    assert "truncated" in image_set.unreadable["sub/cut.jpg"]
    assert len(image_set) == 4  # exact once read through
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second pass does not warn again
        content = image_set.content()
    assert content["images"] == 4 and content["format"] == "PNG files"
    assert image_set.unreadable_warning().startswith("skipped 2 unreadable image(s)")
    # max_images counts images read; the pass stops without decoding more.
    two = open_image_set(folder, max_images=2)
    assert [k for k, _, _ in two.iter_items()] == ["000000.png", "000001.png"] and two.unreadable == {}


def test_image_set_with_no_readable_image_says_what_to_do(tmp_path):
    from infinity_lit.evaluation.images import open_image_set

    _truncated_jpeg(tmp_path / "set" / "a.jpg")
    (tmp_path / "set" / "b.png").write_bytes(b"")
    with pytest.raises(
        ValueError, match=r"none of the 2 image\(s\) in .*set could be read \(a\.jpg \(.*b\.png"
    ):
        open_image_set(tmp_path / "set").content()
    for bad in (0, -1):  # never "no images" in silence
        with pytest.raises(ValueError, match=f"max_images must be at least 1, got {bad}"):
            open_image_set(tmp_path / "set", max_images=bad)


def test_image_set_of_shards_skips_and_reports_a_corrupt_sample(tmp_path, openmoji_shards):
    import io
    import shutil
    import tarfile

    from infinity_lit.evaluation.images import open_image_set

    data = tmp_path / "shards"
    shutil.copytree(openmoji_shards, data)
    shard = data / "val-000000.tar"
    with tarfile.open(shard) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}
    victim = sorted(n for n in members if n.endswith(".png"))[0]
    with tarfile.open(shard, "w") as tar:
        for name, payload in members.items():
            payload = b"not a png" if name == victim else payload
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    image_set = open_image_set(data, split="val")
    n = len(image_set)
    with pytest.warns(UserWarning) as caught:
        content = image_set.content()
    bad = f"val-000000.tar/{victim.split('.', 1)[0]}"
    reports = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert [r.split(": ", 1)[0] for r in reports] == [f"skipped 1 unreadable image(s) in {data} (val split)"]
    assert list(image_set.unreadable) == [bad] and bad in reports[0]
    assert content["images"] == n - 1 == len(image_set)
