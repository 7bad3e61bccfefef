"""Nothing reaches the network: with sockets blocked, the ``infinity-lit`` entry point builds OpenMoji
shards, fits a tiny tokenizer and a tiny generator over it, samples PNGs from the generator, and scores them
(FID / KID with the Inception weights converted offline from an installed package, PSNR / SSIM / rFID of the
tokenizer), every cache pointed at an empty folder so that an already-downloaded file cannot hide a
download."""

from __future__ import annotations

import json
import math
import re
import socket
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import OPENMOJI_TEST_BUILD, TINY_TOKENIZER, TINY_TRANSFORMER
from PIL import Image

from infinity_lit.cli import main
from infinity_lit.cli.common import DEBUG_ENV
from infinity_lit.metrics.clip_score import ENV_CLIP_WEIGHTS
from infinity_lit.metrics.inception import CONVERTED_NAME, ENV_CACHE, ENV_WEIGHTS

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_RECIPE = REPO / "experiments" / "tokenizer" / "openmoji64.yaml"
GENERATOR_RECIPE = REPO / "experiments" / "generator" / "openmoji64.yaml"
PROMPTS = ["grinning face", "red apple", "cat face", "rocket"]


class NetworkBlocked(ConnectionError):
    """Raised by every blocked network entry point; the message names the host (or URL) asked for."""


class Blocker:
    """What tried to reach the network while the block was on: one ``"function: host"`` line per try."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def refuse(self, what: str, target) -> None:
        line = f"{what}: {_host(target)}"
        self.attempts.append(line)
        raise NetworkBlocked(f"network access blocked by the test ({line})")


def _host(target) -> str:
    """``host:port`` of a socket address, a URL, or a ``Request``'s URL."""
    if isinstance(target, tuple) and len(target) >= 2:
        return f"{target[0]}:{target[1]}"
    return str(getattr(target, "full_url", target))


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Blocker:
    """Sockets, DNS, ``torch.hub`` downloads and ``urllib`` blocked; empty caches; no offline switches.

    The hub offline variables are removed, not set: the code itself must not reach out, and the socket block
    is the check. Every attempt is recorded (and asserted absent at the end), so one that a library catches
    and silently falls back from still fails the test.
    """
    import torch.hub

    blocker = Blocker()
    caches = {
        name: tmp_path / "caches" / name.lower() for name in ("TORCH_HOME", "HF_HOME", "XDG_CACHE_HOME")
    }
    caches[ENV_CACHE] = tmp_path / "caches" / "infinity_lit"
    for name, path in caches.items():
        path.mkdir(parents=True)
        monkeypatch.setenv(name, str(path))
    for name in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "TRANSFORMERS_CACHE",
        ENV_WEIGHTS,
        ENV_CLIP_WEIGHTS,
        DEBUG_ENV,
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # a set_dir() elsewhere would override TORCH_HOME

    def method(name):
        def blocked(self, address, *args, **kwargs):
            blocker.refuse(f"socket.{name}", address)

        return blocked

    def function(name):
        def blocked(target, *args, **kwargs):
            blocker.refuse(name, target)

        return blocked

    monkeypatch.setattr(socket.socket, "connect", method("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", method("connect_ex"))
    monkeypatch.setattr(socket, "create_connection", function("socket.create_connection"))
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda host, port, *a, **k: blocker.refuse("socket.getaddrinfo", (host, port))
    )
    monkeypatch.setattr(socket, "gethostbyname", function("socket.gethostbyname"))
    monkeypatch.setattr(urllib.request, "urlopen", function("urllib.request.urlopen"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", function("torch.hub.download_url_to_file"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", function("torch.hub.load_state_dict_from_url"))
    # torch-fidelity's own reference to it: where its Inception would fetch weights without a local file.
    monkeypatch.setattr(
        "torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url",
        function("torch_fidelity load_state_dict_from_url"),
    )
    yield blocker
    assert blocker.attempts == [], f"tried to reach the network: {blocker.attempts}"
    for name in ("TORCH_HOME", "HF_HOME"):  # nothing was fetched into them either
        assert not any(caches[name].rglob("*")), (name, sorted(caches[name].rglob("*")))


def _check_the_block(blocker: Blocker) -> None:
    """The block is on: every entry point raises ``NetworkBlocked`` naming the host, and is recorded."""

    def connect(method: str) -> None:
        with socket.socket() as sock:
            getattr(sock, method)(("127.0.0.1", 9))

    tries = {
        "socket.create_connection: 127.0.0.1:9": lambda: socket.create_connection(("127.0.0.1", 9), 1),
        "socket.connect: 127.0.0.1:9": lambda: connect("connect"),
        "socket.connect_ex: 127.0.0.1:9": lambda: connect("connect_ex"),
        "socket.getaddrinfo: example.com:443": lambda: socket.getaddrinfo("example.com", 443),
        "socket.gethostbyname: example.com": lambda: socket.gethostbyname("example.com"),
        "urllib.request.urlopen: https://example.com/x": lambda: urllib.request.urlopen(
            "https://example.com/x"
        ),
        "torch.hub.download_url_to_file: https://example.com/w.pth": lambda: torch.hub.download_url_to_file(
            "https://example.com/w.pth", "w.pth"
        ),
    }
    for line, attempt in tries.items():
        with pytest.raises(NetworkBlocked, match=re.escape(line)):
            attempt()
    assert blocker.attempts == list(tries)
    blocker.attempts.clear()


def _cli(argv: list[str]) -> None:
    """``infinity-lit ARGV`` in this process (the console script's function), expecting success."""
    main([str(a) for a in argv])


def _finite_numbers(metrics: dict, keys: tuple[str, ...]) -> dict[str, float]:
    values = {k: metrics[k] for k in keys}
    assert all(isinstance(v, float) and math.isfinite(v) for v in values.values()), values
    return values


def test_fit_sample_and_score_with_the_network_blocked(offline, tmp_path, monkeypatch):
    _check_the_block(offline)
    monkeypatch.chdir(tmp_path)  # runs/ is relative to the working directory
    cache = tmp_path / "caches" / "infinity_lit"  # the offline fixture's empty INFINITY_LIT_CACHE

    # Data: real OpenMoji shards from the installed package (the tests' small build).
    shards = tmp_path / "openmoji32"
    build = [f"--{k}={v}" for k, v in OPENMOJI_TEST_BUILD.items()]
    _cli(["data", "openmoji", "--out", shards, *build])
    assert list(shards.glob("train-*.tar")) and list(shards.glob("val-*.tar"))

    # Fit: a tiny tokenizer (2 steps), then a tiny generator on it (2 steps, one validation: sample grid).
    trainer = [
        "--trainer.precision=32-true",
        "--trainer.max_time=null",
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_model_summary=false",
        "--trainer.enable_progress_bar=false",
    ]
    data = [
        f"--data.init_args.data_dir={shards}",
        f"--data.init_args.resolution={OPENMOJI_TEST_BUILD['resolution']}",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
    ]
    tokenizer = [f"--model.tokenizer.{k}={json.dumps(v)}" for k, v in TINY_TOKENIZER.items()]
    _cli(["tokenizer", "fit", "-c", TOKENIZER_RECIPE, "--run_name=offline", *trainer, *data, *tokenizer])
    tokenizer_ckpt = tmp_path / "runs" / "tokenizer" / "offline" / "checkpoints" / "last.ckpt"
    assert tokenizer_ckpt.is_file()

    transformer = [f"--model.transformer.{k}={v}" for k, v in TINY_TRANSFORMER.items()]
    generator = [
        f"--model.tokenizer_checkpoint={tokenizer_ckpt.parents[1]}",
        "--model.text_max_length=16",
        f"--model.val_prompts={json.dumps(PROMPTS[:2])}",
        "--model.optimizer.warmup_steps=1",
    ]
    _cli(
        [
            "generator",
            "fit",
            "-c",
            GENERATOR_RECIPE,
            "--run_name=offline",
            *trainer,
            *data,
            *transformer,
            *generator,
        ]
    )
    generator_ckpt = tmp_path / "runs" / "generator" / "offline" / "checkpoints" / "last.ckpt"
    assert generator_ckpt.is_file()
    state = torch.load(generator_ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 2 and state["hyper_parameters"]["text_encoder"] == "minilm"

    # Sample: one 32² PNG per prompt.
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    samples = tmp_path / "samples"
    _cli(["sample", "--checkpoint", generator_ckpt.parents[1], "--prompts", prompts, "--out", samples])
    pngs = sorted(samples.glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(len(PROMPTS))]
    for png in pngs:
        with Image.open(png) as im:
            assert im.size == (32, 32) and im.mode == "RGB"

    # Score: FID / KID against held-out images, the Inception weights converted into the empty cache.
    assert not (cache / CONVERTED_NAME).exists()
    metrics_path = tmp_path / "metrics.json"
    score = ["--generated", samples, "--reference", shards, "--max_reference", 4, "--kid_subsets", 2]
    _cli(["eval", "score", *score, "--out", metrics_path])
    record = json.loads(metrics_path.read_text(encoding="utf-8"))
    assert record["num_images"] == len(PROMPTS) and record["num_reference_images"] == 4
    assert record["weights"]["inception"] == str(cache / CONVERTED_NAME)
    assert (cache / CONVERTED_NAME).is_file()
    fid = _finite_numbers(record["metrics"], ("fid", "kid_mean", "kid_std"))["fid"]
    assert fid > 0

    # Score the tokenizer: PSNR / SSIM / per-scale PSNR / rFID of held-out reconstructions.
    recon = tmp_path / "recon"
    _cli(
        ["eval", "recon", "--tokenizer", tokenizer_ckpt, "--data", shards, "--out", recon, "--max_images", 4]
    )
    record = json.loads((recon / "metrics.json").read_text(encoding="utf-8"))
    values = _finite_numbers(record["metrics"], ("psnr", "ssim", "rfid"))
    assert 0 < values["psnr"] < 100 and -1 <= values["ssim"] <= 1
    per_scale = record["metrics"]["psnr_per_scale"]
    assert list(per_scale) == [str(k) for k in range(1, len(TINY_TOKENIZER["scale_schedule"]) + 1)]
    _finite_numbers(per_scale, tuple(per_scale))
