"""The benchmark suite: every speed case in one command, written to ``suite.json`` and ``suite.md``.

    python benchmarks/suite.py                                # every CPU case, 5 timed runs each
    python benchmarks/suite.py --only tokenizer,gemm          # some cases
    python benchmarks/suite.py --threads 2 --repeats 7 --out benchmarks/results
    python benchmarks/suite.py --quick --repeats 1            # tiny configs: a smoke run of the machinery
    python benchmarks/suite.py --device cuda ...              # on a GPU (benchmarks/gpu.sh runs this)

Cases (``--only``; the reference configurations of the toolkit's performance work):

- ``tokenizer``: ``BitwiseTokenizer.forward`` (encode → multi-scale BSQ → decode) in eval mode under
  ``no_grad``, random weights and images; base 128 channels, multipliers [1,2,4,4,4], 2 encoder / 3 decoder
  residual blocks per level, stride 16; 256² with the 7-scale schedule ``square_schedule(16)``, 64² with
  ``square_schedule(4)``; d 16 and 32; batch 1 and 4. Paths: ``fp32`` (plain), ``auto`` and ``bf16``
  through ``inference_precision([encoder, decoder], p)`` (the weight casts are inside the timed call).
- ``train``: one generator training step (transformer forward + per-bit loss + backward + AdamW step) on
  inputs/targets made by BSC (p_max 0.3) from a random latent through a ``MultiScaleBSQ``; depth 4 /
  width 256 / 4 heads and the 125M preset, batch 4, d 32, text width 2048, 16 text tokens, the 7-scale
  256² schedule (521 tokens). Paths: ``fp32`` and ``bf16`` (``torch.autocast`` bf16, as Lightning's
  ``bf16-mixed``). Also the FLOPs of the step (formula in the output) and the achieved FLOP/s.
- ``sample``: ``generator.sample`` of one image, cfg 4, KV cache, depth 4 and 125M, d 32, with the 256²
  tokenizer above; ``<p>`` = the whole call, ``<p> no decode`` = the same call with a tokenizer whose
  decode is a no-op stub (the transformer part: text, scale loop, bit sampling, F̂ accumulation).
  Paths ``fp32`` / ``auto`` / ``bf16`` (sample's ``precision``).
- ``resolution``: the transformer part of sampling (as above, no decode) at the 64², 256², 512², 1024²
  schedules (``square_schedule(4 / 16 / 32 / 64)``: 3, 7, 10, 13 scales), depth 4 / width 256, batch 1,
  cfg 4; sequence length, latency, memory. Paths ``fp32`` and ``auto``.
- ``gemm``: ``torch.mm`` of square fp32 and bf16 matrices (2048², 4096²), GFLOP/s = 2n³ / t: the
  machine's GEMM peak, against which the training step's achieved FLOP/s is set.
- ``sample2b`` and ``train_throughput`` (not in the default set; for GPUs): the 2.2B preset sampling one
  1024² image (13 scales, bf16, KV cache, cfg 4, with the decode of a 1024² tokenizer of the reference
  configuration) and the 125M training throughput at 256² (images/s).

Method: each case runs in a fresh subprocess (so its memory is its own). In it, every path runs once as
warm-up, then the paths run in alternation (A, B, C, A, B, C, …) ``--repeats`` times, so that a change
of the machine's load hits all alike; each figure is the min / median / max of those runs. Memory: on
CPU the peak resident set (``VmHWM``, reset before each run through ``/proc/self/clear_refs``, with
``malloc_trim`` first so freed memory is returned) above the subprocess's RSS before the case was built
(so it includes the weights, data and optimizer state), and the growth within one run; on CUDA
``torch.cuda.max_memory_allocated`` (absolute, everything of the case lives on the GPU) and its growth
within one run. The load average is recorded before and after each case. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

DEFAULT_CASES = ("tokenizer", "train", "train_tokenizer", "sample", "resolution", "gemm")
EXTRA_CASES = ("sample2b", "train_throughput")
ALL_CASES = DEFAULT_CASES + EXTRA_CASES

#: Reference figures (seconds, fp32, 2 threads) measured on another machine (2 cores with AMX bf16), with
#: the reference implementation on the same configurations. Keys: (case label, "whole" | "no decode").
REFERENCE_S = {
    ("tokenizer 256² b1", "whole"): 3.65,
    ("tokenizer 64² b1", "whole"): 0.24,
    ("train depth4", "whole"): 0.43,
    ("train 125M", "whole"): 5.66,
    ("sample depth4", "whole"): 2.46,
    ("sample depth4", "no decode"): 0.10,
    ("sample 125M", "whole"): 3.67,
    ("sample 125M", "no decode"): 1.22,
}

TEXT_DIM = 2048
TEXT_LEN = 16
CODEBOOK_DIM = 32
#: A step this slow (s, at warm-up) gets fewer timed runs.
SLOW_RUN_S = 20.0
SLOW_REPEATS = 3

FLOP_FORMULA = (
    "training-step FLOPs = 6·B·(P_img·L + P_txt·T + P_vec) for the linear layers (forward 2·P·tokens, backward "
    "twice that), where P_img = depth·(3C² + C² + 2C² [cross q, proj] + 2·C·C_ffn) + d·C + 2d·C are the "
    "weights applied to each of the L image tokens, P_txt = depth·2C² [cross k, v] + C_text·C + C² those "
    "applied to each of the T text tokens, P_vec = C_text·C + 6C² + 2C² those applied once per image; plus "
    "attention 3·depth·4·B·C·(Σ_k n_k·E_k + L·T) (QKᵀ and AV, forward + backward ×3; n_k tokens of scale "
    "k, E_k = keys it sees = the end of scale k in the block-causal pattern; the L·T term is the "
    "cross-attention; C = H·hd). Norms, activations, RoPE, softmax, loss and the optimizer are not counted."
)


def log(msg: str) -> None:
    print(f"[suite {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ measuring


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_kb() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


#: RSS (MiB) of the case's process before the case was built (set by ``run_child``).
_CASE_BASE_MB: float | None = None


def _rss_mb() -> float:
    _malloc_trim()
    return (_status_kb("VmRSS") or _maxrss_kb()) / 1024


class Meter:
    """Peak memory of one run: CPU resident set (VmHWM) or CUDA allocated bytes, in MiB."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.synchronize()
            self.case_base = 0.0
            self.method = (
                "torch.cuda.max_memory_allocated (absolute; growth = above allocated before the run)"
            )
        else:
            self.case_base = _CASE_BASE_MB if _CASE_BASE_MB is not None else _rss_mb()
            self.hwm = _reset_hwm() and _status_kb("VmHWM") is not None
            self.method = (
                "VmHWM (peak RSS) above the RSS before the case was built; growth = above the RSS before the run"
                if self.hwm
                else "ru_maxrss of the process (peak over the whole case, not per run) above the RSS before the case"
            )
        self.run_base = 0.0

    def begin(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.run_base = torch.cuda.memory_allocated() / 2**20
        else:
            _malloc_trim()
            self.run_base = (_status_kb("VmRSS") or 0) / 1024
            if self.hwm:
                _reset_hwm()

    def end(self) -> tuple[float, float]:
        """(peak above the case's base, growth within the run), MiB."""
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = (_status_kb("VmHWM") if self.hwm else _maxrss_kb()) / 1024
        return peak - self.case_base, peak - self.run_base


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def alternate(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device, label: str) -> dict:
    """Warm up every path once, then time them in alternation; per path min/median/max and memory."""
    meter = Meter(device)
    notes = []
    warm = {}
    for name, fn in fns.items():
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        warm[name] = time.perf_counter() - t0
        log(f"  {label} | {name}: warm-up {warm[name]:.3f} s")
    if max(warm.values()) > SLOW_RUN_S and repeats > SLOW_REPEATS:
        notes.append(
            f"a warm-up run took {max(warm.values()):.1f} s (> {SLOW_RUN_S:.0f} s): {SLOW_REPEATS} timed runs "
            f"instead of {repeats}"
        )
        repeats = SLOW_REPEATS
    times: dict[str, list[float]] = {n: [] for n in fns}
    peaks: dict[str, list[float]] = {n: [] for n in fns}
    growth: dict[str, list[float]] = {n: [] for n in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            meter.begin()
            t0 = time.perf_counter()
            fn()
            sync(device)
            dt = time.perf_counter() - t0
            peak, grow = meter.end()
            times[name].append(dt)
            peaks[name].append(peak)
            growth[name].append(grow)
            log(f"  {label} | {name}: run {r + 1}/{repeats} {dt:.3f} s")
    paths = {}
    for name in fns:
        t = times[name]
        paths[name] = {
            "times_s": t,
            "min_s": min(t),
            "median_s": statistics.median(t),
            "max_s": max(t),
            "warmup_s": warm[name],
            "peak_mem_MB": max(peaks[name]),
            "run_mem_growth_MB": max(growth[name]),
        }
    return {"paths": paths, "repeats": repeats, "mem_method": meter.method, "notes": notes}


# ------------------------------------------------------------------------------------------ builders


def tokenizer_config(side: int, d: int, quick: bool):
    from infinity_lit.quantizer import square_schedule
    from infinity_lit.tokenizer import TokenizerConfig

    if quick:  # stride 16 as well, but narrow
        net = dict(base_channels=16, channel_multipliers=[1, 1, 1, 1, 1], num_res_blocks=1, num_groups=8)
    else:
        net = dict(base_channels=128, channel_multipliers=[1, 2, 4, 4, 4], num_res_blocks=2)
    return TokenizerConfig(codebook_dim=d, scale_schedule=square_schedule(side // 16), **net)


def transformer_config(model: str, schedule, d: int, text_dim: int):
    from infinity_lit.generator.transformer import TransformerConfig

    extra = dict(codebook_dim=d, scale_schedule=schedule, text_dim=text_dim)
    if model == "depth4":
        return TransformerConfig(depth=4, width=256, num_heads=4, **extra)
    if model == "tiny":
        return TransformerConfig(depth=2, width=64, num_heads=4, **extra)
    return TransformerConfig.preset(model, **extra)


def text_features(batch: int, dim: int, length: int, device: torch.device):
    from infinity_lit.generator.text_encoders import TextFeatures

    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(batch, length, dim, generator=g)
    return TextFeatures(tokens, torch.ones(batch, length, dtype=torch.bool), tokens.mean(1)).to(device)


class FixedText:
    """Stands in for a text encoder: the same precomputed caption features for every prompt."""

    def __init__(self, dim: int, length: int, device: torch.device) -> None:
        self.dim = dim
        self.one = text_features(1, dim, length, device)

    def __call__(self, prompts):
        from infinity_lit.generator.text_encoders import TextFeatures

        return TextFeatures.cat([self.one] * len(prompts))


class NoDecodeTokenizer:
    """The parts of a tokenizer that ``sample`` uses, with a no-op decode (times the transformer part)."""

    def __init__(self, quantizer, codebook_dim: int, schedule) -> None:
        self.quantizer = quantizer
        self.codebook_dim = codebook_dim
        self.scale_schedule = schedule
        self.decoder = nn.Identity()

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        return f_hat.new_zeros(f_hat.shape[0], 3, 1, 1)


# ------------------------------------------------------------------------------------------ flops


def train_flops(cfg, schedule, batch: int, text_len: int) -> dict:
    """FLOPs of one training step by ``FLOP_FORMULA``."""
    from infinity_lit.quantizer import scale_bounds

    C, depth, d, Ct = cfg.width, cfg.depth, cfg.codebook_dim, cfg.text_dim
    ffn = round(cfg.mlp_ratio * C)
    cross = cfg.cross_attention
    P_img = depth * (4 * C * C + (2 * C * C if cross else 0) + 2 * C * ffn) + d * C + 2 * d * C
    P_txt = (depth * 2 * C * C if cross else 0) + Ct * C + C * C
    P_vec = Ct * C + 6 * C * C + 2 * C * C
    bounds = scale_bounds(schedule)
    L = bounds[-1][1]
    pairs = sum((b - a) * b for a, b in bounds)
    linear = 6 * batch * (P_img * L + P_txt * text_len + P_vec)
    attention = 3 * depth * 4 * batch * C * (pairs + (L * text_len if cross else 0))
    return {
        "linear_flops": linear,
        "attention_flops": attention,
        "total_flops": linear + attention,
        "tokens": L,
        "attention_pairs_sum_nk_Ek": pairs,
    }


# ------------------------------------------------------------------------------------------ cases (child side)


def run_tokenizer(spec: dict, device: torch.device) -> dict:
    from infinity_lit.precision import describe_precision, inference_precision
    from infinity_lit.tokenizer import BitwiseTokenizer

    side, d, batch = spec["side"], spec["d"], spec["batch"]
    torch.manual_seed(0)
    with device:
        tok = BitwiseTokenizer(tokenizer_config(side, d, spec["quick"])).eval()
    images = (torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)

    def run(p: str):
        def fn():
            with torch.no_grad():
                if p == "fp32":
                    return tok(images)
                with inference_precision([tok.encoder, tok.decoder], p, device):
                    return tok(images)

        return fn

    res = alternate({p: run(p) for p in ("fp32", "auto", "bf16")}, spec["repeats"], device, spec["label"])
    res["config"] = {
        "image": side,
        "codebook_dim": d,
        "batch": batch,
        "schedule": [list(hw) for hw in tok.config.scale_schedule],
        "params_M": sum(p.numel() for p in tok.parameters()) / 1e6,
        "runs_as": {
            p: ("fp32" if p == "fp32" else describe_precision(p, device)) for p in ("fp32", "auto", "bf16")
        },
    }
    return res


def _train_setup(spec: dict, device: torch.device, side: int):
    from infinity_lit.generator.self_correction import BitwiseSelfCorrection
    from infinity_lit.generator.transformer import BitwiseTransformer
    from infinity_lit.quantizer import MultiScaleBSQ, square_schedule

    d, batch = spec["d"], spec["batch"]
    schedule = square_schedule(side)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    cfg = transformer_config(spec["model"], schedule, d, spec["text_dim"])
    with device:
        model = BitwiseTransformer(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    quantizer = MultiScaleBSQ(d, schedule).eval()
    latent = torch.randn(batch, d, side, side, generator=g)
    out = BitwiseSelfCorrection(quantizer, max_flip_prob=0.3)(latent, generator=g)
    inputs, targets = out.inputs.to(device), out.targets.to(device)
    text = text_features(batch, spec["text_dim"], spec["text_len"], device)

    def step(bf16: bool):
        def fn():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model.loss(model(inputs, text), targets)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return fn

    return model, cfg, schedule, step


def _model_config(spec: dict, cfg, model) -> dict:
    """The transformer's size, for a case's ``config`` record."""
    return {
        "model": spec["model"],
        "depth": cfg.depth,
        "width": cfg.width,
        "heads": cfg.num_heads,
        "params_M": model.num_parameters() / 1e6,
    }


def run_train(spec: dict, device: torch.device) -> dict:
    model, cfg, schedule, step = _train_setup(spec, device, spec["side"])
    res = alternate({"fp32": step(False), "bf16": step(True)}, spec["repeats"], device, spec["label"])
    flops = train_flops(cfg, schedule, spec["batch"], spec["text_len"])
    for p in res["paths"].values():
        p["achieved_GFLOPs"] = flops["total_flops"] / p["median_s"] / 1e9
        p["images_per_s"] = spec["batch"] / p["median_s"]
    res["config"] = {
        **_model_config(spec, cfg, model),
        "batch": spec["batch"],
        "codebook_dim": spec["d"],
        "text_dim": spec["text_dim"],
        "text_len": spec["text_len"],
        "tokens": flops["tokens"],
        "flops": flops,
        "flop_formula": FLOP_FORMULA,
    }
    return res


def run_train_tokenizer(spec: dict, device: torch.device) -> dict:
    """One training step of the quickstart's tokenizer (``experiments/tokenizer/openmoji64.yaml``: 64², base
    32 channels, multipliers [1, 2, 4, 4], 1 residual block, d = 16, schedule [1, 2, 4, 6, 8], batch 8):
    forward, L1 + commitment loss, backward, AdamW; fp32 against bf16 autocast (Lightning's bf16-mixed)."""
    from infinity_lit.tokenizer import BitwiseTokenizer, TokenizerConfig

    side, batch = spec["side"], spec["batch"]
    torch.manual_seed(0)
    cfg = TokenizerConfig(
        codebook_dim=16,
        scale_schedule=[(1, 1), (2, 2), (4, 4), (6, 6), (8, 8)][: 3 if spec["quick"] else 5],
        base_channels=16 if spec["quick"] else 32,
        channel_multipliers=[1, 2, 4, 4],
        num_res_blocks=1,
        num_groups=16 if spec["quick"] else 32,
    )
    with device:
        tok = BitwiseTokenizer(cfg).train()
    opt = torch.optim.AdamW(tok.parameters(), lr=4e-4, betas=(0.9, 0.99))
    images = (torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)

    def step(bf16: bool):
        def fn():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                recon, out = tok(images)
                loss = (recon.float() - images).abs().mean() + 0.25 * out.commit_loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return fn

    res = alternate({"fp32": step(False), "bf16": step(True)}, spec["repeats"], device, spec["label"])
    for p in res["paths"].values():
        p["images_per_s"] = batch / p["median_s"]
    res["config"] = {
        "image": side,
        "batch": batch,
        "schedule": [list(hw) for hw in cfg.scale_schedule],
        "params_M": sum(p.numel() for p in tok.parameters()) / 1e6,
    }
    return res


def run_sample(spec: dict, device: torch.device) -> dict:
    from infinity_lit.generator.sampling import sample
    from infinity_lit.generator.transformer import BitwiseTransformer
    from infinity_lit.precision import describe_precision
    from infinity_lit.quantizer import MultiScaleBSQ, num_tokens, square_schedule
    from infinity_lit.tokenizer import BitwiseTokenizer

    d = spec["d"]
    schedule = square_schedule(spec["side"] // 16)
    torch.manual_seed(0)
    cfg = transformer_config(spec["model"], schedule, d, spec["text_dim"])
    with device:
        model = BitwiseTransformer(cfg).eval()
        if spec["decode"]:
            tok = BitwiseTokenizer(tokenizer_config(spec["side"], d, spec["quick"])).eval()
            quantizer = tok.quantizer
        else:
            tok, quantizer = None, MultiScaleBSQ(d, schedule).eval()
    stub = NoDecodeTokenizer(quantizer, d, model.scale_schedule)
    text = FixedText(spec["text_dim"], spec["text_len"], device)

    def run(tokenizer, p: str):
        return lambda: sample(model, tokenizer, text, ["a prompt"], cfg=spec["cfg"], seed=0, precision=p)

    fns = {}
    for p in spec["paths"]:
        if tok is not None:
            fns[p] = run(tok, p)
        fns[f"{p} no decode"] = run(stub, p)
    res = alternate(fns, spec["repeats"], device, spec["label"])
    res["config"] = {
        **_model_config(spec, cfg, model),
        "image": spec["side"],
        "scales": len(schedule),
        "tokens": num_tokens(schedule),
        "cfg": spec["cfg"],
        "codebook_dim": d,
        "text_dim": spec["text_dim"],
        "text_len": spec["text_len"],
        "tokenizer_params_M": None if tok is None else sum(q.numel() for q in tok.parameters()) / 1e6,
        "runs_as": {p: describe_precision(p, device) for p in spec["paths"]},
        "no_decode": "sample() with a tokenizer whose decode is a no-op stub: text features (precomputed), "
        "the KV-cached scale loop, bit sampling and F̂ accumulation; not the decoder",
    }
    return res


def run_gemm(spec: dict, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    fns, flops = {}, {}
    mats = {}
    for n in spec["sizes"]:
        a = torch.randn(n, n, generator=g).to(device)
        b = torch.randn(n, n, generator=g).to(device)
        for dt, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            mats[(n, name)] = (a.to(dt), b.to(dt))
            key = f"{name} {n}²"
            fns[key] = lambda n=n, name=name: torch.mm(*mats[(n, name)])
            flops[key] = 2 * n**3
    res = alternate(fns, spec["repeats"], device, spec["label"])
    for key, p in res["paths"].items():
        p["GFLOPs_median"] = flops[key] / p["median_s"] / 1e9
        p["GFLOPs_best"] = flops[key] / p["min_s"] / 1e9
    res["config"] = {"sizes": spec["sizes"], "flops": "2·n³ per product"}
    if device.type == "cuda":
        res["config"]["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return res


def run_child(spec: dict) -> dict:
    global _CASE_BASE_MB
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec["device"])
    import infinity_lit.generator.sampling
    import infinity_lit.tokenizer  # noqa: F401

    if device.type == "cuda":
        torch.cuda.init()
    else:
        _CASE_BASE_MB = _rss_mb()
    fn = {
        "tokenizer": run_tokenizer,
        "train": run_train,
        "train_throughput": run_train,
        "train_tokenizer": run_train_tokenizer,
        "sample": run_sample,
        "sample2b": run_sample,
        "resolution": run_sample,
        "gemm": run_gemm,
    }[spec["case"]]
    res = fn(spec, device)
    res["threads"] = torch.get_num_threads()
    return res


# ------------------------------------------------------------------------------------------ plan (parent side)


def plan(cases: list[str], quick: bool, repeats: int, device: str) -> list[dict]:
    common = dict(
        quick=quick,
        repeats=repeats,
        device=device,
        d=CODEBOOK_DIM,
        text_dim=64 if quick else TEXT_DIM,
        text_len=TEXT_LEN,
    )
    small = "tiny" if quick else "depth4"
    specs: list[dict] = []

    def add(case: str, label: str, ref: str | None = None, **kw) -> None:
        specs.append({**common, "case": case, "label": label, "ref": None if quick else ref, **kw})

    for case in cases:
        if case == "tokenizer":
            grid = (
                [(64, 16, 1)] if quick else [(s, d, b) for s in (256, 64) for d in (16, 32) for b in (1, 4)]
            )
            for side, d, b in grid:
                add(
                    "tokenizer",
                    f"tokenizer {side}² d{d} b{b}",
                    f"tokenizer {side}² b{b}",
                    side=side,
                    d=d,
                    batch=b,
                )
        elif case == "train":
            for model in [small] if quick else ["depth4", "125M"]:
                batch = 2 if quick else 4
                add(
                    "train",
                    f"train {model} b{batch}",
                    f"train {model}",
                    model=model,
                    side=4 if quick else 16,
                    batch=batch,
                )
        elif case == "train_tokenizer":
            side = 32 if quick else 64
            add("train_tokenizer", f"train tokenizer {side}² b8 (quickstart)", side=side, batch=8)
        elif case == "sample":
            for model in [small] if quick else ["depth4", "125M"]:
                add(
                    "sample",
                    f"sample {model} cfg4",
                    f"sample {model}",
                    model=model,
                    side=64 if quick else 256,
                    cfg=4.0,
                    decode=True,
                    paths=["fp32", "auto", "bf16"],
                )
        elif case == "resolution":
            for side in (64, 128) if quick else (64, 256, 512, 1024):
                add(
                    "resolution",
                    f"resolution {side}²",
                    model=small,
                    side=side,
                    cfg=4.0,
                    decode=False,
                    paths=["fp32", "auto"],
                )
        elif case == "gemm":
            add("gemm", "gemm", sizes=[256, 512] if quick else [2048, 4096])
        elif case == "sample2b":
            add(
                "sample2b",
                f"sample {'tiny 128²' if quick else '2.2B 1024²'} cfg4",
                model="tiny" if quick else "2.2B",
                side=128 if quick else 1024,
                cfg=4.0,
                decode=True,
                paths=["bf16"],
            )
        elif case == "train_throughput":
            add(
                "train_throughput",
                f"train throughput {'tiny 64² b2' if quick else '125M 256² b32'}",
                model="tiny" if quick else "125M",
                side=4 if quick else 16,
                batch=2 if quick else 32,
            )
    return specs


def machine_info(device: str) -> dict:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    caps = {}
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        try:
            caps = get()
        except Exception:
            caps = {}
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    try:
        import lightning

        lightning_version = lightning.__version__
    except ImportError:
        lightning_version = None
    from infinity_lit.precision import describe_precision

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    cuda = {}
    if gpu is not None:
        props = torch.cuda.get_device_properties(0)
        cuda = {
            "gpu_memory_GiB": props.total_memory / 2**30,
            "cuda": torch.version.cuda,
            "cuda_matmul_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32),
        }
    return {
        **cuda,
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cpu": model,
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "amx_bf16": bool(caps.get("amx_bf16", False)),
        "avx512_bf16": bool(caps.get("avx512_bf16", False)),
        "gpu": gpu,
        "device": device,
        "auto_runs_as": describe_precision("auto", device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning_version,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def launch(spec: dict) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", json.dumps(spec)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("SUITE-RESULT "):
            return json.loads(line[len("SUITE-RESULT ") :])
    return {"error": f"the case's process exited with {proc.returncode} and no result (see stderr)"}


def summarise(header: dict, results: list[dict]) -> dict:
    """Reference ratios and the training step's fraction of the GEMM peak."""
    peaks = {}
    for r in results:
        if r.get("case") == "gemm" and "paths" in r:
            for key, p in r["paths"].items():
                dtype = key.split()[0]
                peaks[dtype] = max(peaks.get(dtype, 0.0), p["GFLOPs_median"])
    fractions = []
    for r in results:
        if "paths" not in r:
            continue
        for path, p in r["paths"].items():
            ref_label = r.get("ref")
            if ref_label:
                kind = "no decode" if path.endswith("no decode") else "whole"
                ref = REFERENCE_S.get((ref_label, kind))
                if ref is not None:
                    p["reference_s"] = ref
                    p["reference_over_ours"] = ref / p["median_s"]
            if r.get("case") in ("train", "train_throughput") and path in peaks:
                p["fraction_of_gemm_peak"] = p["achieved_GFLOPs"] / peaks[path]
                fractions.append(
                    {
                        "case": r["label"],
                        "path": path,
                        "achieved_GFLOPs": p["achieved_GFLOPs"],
                        "gemm_peak_GFLOPs": peaks[path],
                        "fraction": p["fraction_of_gemm_peak"],
                    }
                )
    return {"gemm_peak_GFLOPs": peaks, "train_fraction_of_peak": fractions}


def _fmt(x, spec: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, spec)


def _extra(r: dict, path: str, p: dict) -> str:
    case, cfg = r["case"], r.get("config", {})
    if case == "gemm":
        return f"{p['GFLOPs_median']:.0f} GFLOP/s (best {p['GFLOPs_best']:.0f})"
    if case in ("train", "train_throughput"):
        s = f"{p['achieved_GFLOPs']:.1f} GFLOP/s, {p['images_per_s']:.2f} img/s"
        if "fraction_of_gemm_peak" in p:
            s += f", {100 * p['fraction_of_gemm_peak']:.0f} % of {path} GEMM peak"
        return s
    if case in ("sample", "resolution", "sample2b"):
        s = f"{cfg.get('tokens')} tokens, {cfg.get('scales')} scales"
        runs_as = cfg.get("runs_as", {}).get(path.split()[0])
        return s + (f"; runs as {runs_as}" if runs_as else "")
    if case == "train_tokenizer":
        return f"{cfg.get('params_M', 0):.1f}M params, {p['images_per_s']:.1f} img/s"
    if case == "tokenizer":
        runs_as = cfg.get("runs_as", {}).get(path)
        return f"{cfg.get('params_M', 0):.1f}M params; runs as {runs_as}"
    return ""


def markdown(header: dict, results: list[dict], summary: dict, args) -> str:
    h = header
    lines = [
        "# Benchmark suite",
        "",
        f"- date: {h['date_utc']}",
        f"- command: `{' '.join(['python benchmarks/suite.py', *args.argv])}`",
        f"- machine: {h['cpu']}, {h['cores']} logical cores ({h['cores_usable']} usable); AMX bf16: "
        f"{'yes' if h['amx_bf16'] else 'no'}, AVX-512 bf16: {'yes' if h['avx512_bf16'] else 'no'}; "
        f"GPU: {h['gpu'] or 'none'}; device used: {h['device']} (`auto` runs as {h['auto_runs_as']})",
        f"- python {h['python']}, torch {h['torch']}, lightning {h['lightning']}; torch threads {h['torch_threads']}",
        *(
            [
                f"- CUDA {h['cuda']}, {h['gpu_memory_GiB']:.0f} GiB; fp32 matmul TF32: {h['cuda_matmul_tf32']}, "
                f"cuDNN TF32: {h['cudnn_tf32']} (torch defaults)"
            ]
            if h.get("gpu")
            else []
        ),
        f"- {h['repeats']} timed runs per figure after 1 warm-up, paths of a case timed in alternation; "
        "times in seconds (min / median / max)",
        f"- memory: {h.get('mem_method', '–')}",
    ]
    if h.get("quick"):
        lines.append(
            "- **--quick: shrunken configurations for a smoke run; not the reference cases, no ratios**"
        )
    lines += [
        "- reference: the reference implementation's fp32 figures (2 threads) **measured on another machine** "
        "(2 cores with AMX bf16); ref / ours > 1 means ours is faster. Absolute times differ between machines, "
        "so a ratio across machines is indicative only. The tokenizer's reference figures (256² b1, 64² b1) "
        "do not name d; they are set against both d = 16 and d = 32.",
        "",
        "| case | path | runs | min | median | max | peak mem (MiB) | run growth (MiB) | ref fp32 (other machine) | "
        "ref / ours | load before → after | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        load = f"{r['load_before'][0]:.2f} → {r['load_after'][0]:.2f}"
        if "paths" not in r:
            lines.append(f"| {r['label']} | – | – | – | – | – | – | – | – | – | {load} | {r.get('error')} |")
            continue
        for path, p in r["paths"].items():
            lines.append(
                f"| {r['label']} | {path} | {len(p['times_s'])} | {_fmt(p['min_s'])} | {_fmt(p['median_s'])} | "
                f"{_fmt(p['max_s'])} | {_fmt(p['peak_mem_MB'], '.0f')} | {_fmt(p['run_mem_growth_MB'], '.0f')} | "
                f"{_fmt(p.get('reference_s'), '.2f')} | {_fmt(p.get('reference_over_ours'), '.2f')} | {load} | "
                f"{_extra(r, path, p)} |"
            )
    notes = [f"- {r['label']}: {n}" for r in results for n in r.get("notes", [])]
    if notes:
        lines += ["", "Notes:", "", *notes]
    if any(r.get("case") in ("sample", "resolution", "sample2b") for r in results):
        lines += [
            "",
            "`<path> no decode`: `sample()` with a tokenizer whose decode is a no-op stub (the transformer "
            "part: KV-cached scale loop, bit sampling, F̂ accumulation; text features precomputed).",
        ]
    if summary["train_fraction_of_peak"]:
        lines += [
            "",
            "Training step against the GEMM peak (peak = the best median GFLOP/s of the gemm case per dtype):",
            "",
            "| case | path | achieved GFLOP/s | GEMM peak GFLOP/s | fraction |",
            "|---|---|---:|---:|---:|",
        ]
        for f in summary["train_fraction_of_peak"]:
            lines.append(
                f"| {f['case']} | {f['path']} | {f['achieved_GFLOPs']:.1f} | {f['gemm_peak_GFLOPs']:.1f} | "
                f"{100 * f['fraction']:.0f} % |"
            )
    if any(r.get("case") in ("train", "train_throughput") for r in results):
        lines += ["", f"FLOP formula: {FLOP_FORMULA}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=None, help=f"comma-separated cases of {', '.join(ALL_CASES)}")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--out",
        default="runs/benchmarks",
        help="folder for suite.json and suite.md (the recorded results live in benchmarks/results/)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="shrunken configurations: a smoke run")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child is not None:
        res = run_child(json.loads(args._child))
        print("SUITE-RESULT " + json.dumps(res), flush=True)
        return 0
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    cases = DEFAULT_CASES if args.only is None else [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in cases if c not in ALL_CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {', '.join(ALL_CASES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.argv = argv
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = machine_info(args.device)
    header.update(repeats=args.repeats, quick=args.quick, cases=list(cases))
    specs = plan(list(cases), args.quick, args.repeats, args.device)
    for s in specs:
        s["threads"] = args.threads
    log(f"{len(specs)} case(s) on {args.device}, {header['torch_threads']} threads, {args.repeats} runs each")
    results: list[dict] = []
    t_start = time.perf_counter()
    for i, spec in enumerate(specs, 1):
        load_before = list(os.getloadavg())
        log(f"[{i}/{len(specs)}] {spec['label']} (load {load_before[0]:.2f})")
        t0 = time.perf_counter()
        res = launch(spec)
        res.update(case=spec["case"], label=spec["label"], ref=spec.get("ref"), spec=spec)
        res["load_before"], res["load_after"] = load_before, list(os.getloadavg())
        res["wall_s"] = time.perf_counter() - t0
        if "mem_method" in res:
            header["mem_method"] = res["mem_method"]
        if "threads" in res:
            header["torch_threads"] = res["threads"]
        if "error" in res:
            log(f"[{i}/{len(specs)}] {spec['label']}: {res['error']}")
        else:
            log(f"[{i}/{len(specs)}] {spec['label']} done in {res['wall_s']:.0f} s")
        results.append(res)
        summary = summarise(header, results)
        doc = {"header": header, "results": results, "summary": summary, "flop_formula": FLOP_FORMULA}
        (out / "suite.json").write_text(json.dumps(doc, indent=1))
        (out / "suite.md").write_text(markdown(header, results, summary, args))
    header["total_wall_s"] = time.perf_counter() - t_start
    summary = summarise(header, results)
    doc = {"header": header, "results": results, "summary": summary, "flop_formula": FLOP_FORMULA}
    (out / "suite.json").write_text(json.dumps(doc, indent=1))
    (out / "suite.md").write_text(markdown(header, results, summary, args))
    log(f"wrote {out / 'suite.json'} and {out / 'suite.md'} ({header['total_wall_s']:.0f} s)")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
