"""Generator speed and memory: training step, KV-cached vs uncached sampling, IVC vs index head.

    python benchmarks/generator_bench.py                 # everything, prints a Markdown report
    python benchmarks/generator_bench.py --only train    # one part: train | sample | head
    python benchmarks/generator_bench.py --threads 1     # steadier when other jobs share the CPU

Training step = transformer forward + per-bit loss + backward + AdamW step on precomputed inputs (the
frozen tokenizer's encode and BSC are timed separately), with random text features of the MiniLM width.
Sampling latency = ``infinity_lit.generator.sample`` for one prompt with a real (randomly initialised,
minimal) tokenizer decoder; the uncached path recomputes the teacher-forced pass over the whole prefix
of scales at every scale. Times are medians over repeats, in the process's torch thread count.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from infinity_lit.generator.sampling import sample
from infinity_lit.generator.self_correction import BitwiseSelfCorrection
from infinity_lit.generator.text_encoders import TextFeatures
from infinity_lit.generator.transformer import BitwiseTransformer, TransformerConfig
from infinity_lit.quantizer import MultiScaleBSQ, num_tokens, square_schedule
from infinity_lit.tokenizer import BitwiseTokenizer, TokenizerConfig

TEXT_DIM = 384  # all-MiniLM-L6-v2
TEXT_LEN = 12


def _median_ms(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _interleaved_ms(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """Median ms of each function, timed in alternation so that a change of machine load hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def _text(batch: int, generator: torch.Generator) -> TextFeatures:
    tokens = torch.randn(batch, TEXT_LEN, TEXT_DIM, generator=generator)
    return TextFeatures(tokens, torch.ones(batch, TEXT_LEN, dtype=torch.bool), tokens.mean(1))


def bench_train(
    name: str, depth: int, width: int, heads: int, d: int, side: int, batch: int, repeats: int
) -> dict:
    schedule = square_schedule(side)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    cfg = TransformerConfig(
        depth=depth, width=width, num_heads=heads, codebook_dim=d, scale_schedule=schedule, text_dim=TEXT_DIM
    )
    model = BitwiseTransformer(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    quantizer = MultiScaleBSQ(d, schedule).eval()
    latent = torch.randn(batch, d, side, side, generator=g)
    bsc = BitwiseSelfCorrection(quantizer, max_flip_prob=0.3)
    out = bsc(latent, generator=g)
    text = _text(batch, g)
    L = num_tokens(schedule)
    row = {"config": name, "params_M": model.num_parameters() / 1e6, "tokens_per_image": L, "batch": batch}

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(model(out.inputs, text), out.targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    ms = _interleaved_ms({"fp32": lambda: step(False), "bf16": lambda: step(True)}, repeats)
    for precision in ("fp32", "bf16"):
        row[f"step_ms_{precision}"] = ms[precision]
        row[f"tokens_per_s_{precision}"] = batch * L / (ms[precision] / 1000)
    row["bsc_ms"] = _median_ms(lambda: bsc(latent, generator=g), repeats)
    return row


class _RandomText(torch.nn.Module):
    """Deterministic caption features (a hash-seeded draw) standing in for a text encoder in timing runs."""

    dim = TEXT_DIM

    def forward(self, captions):
        feats = [_text(1, torch.Generator().manual_seed(abs(hash(c)) % 2**31)) for c in captions]
        return TextFeatures.cat(feats)


def bench_sample(depth: int, width: int, heads: int, d: int, side: int, repeats: int) -> dict:
    schedule = square_schedule(side)
    torch.manual_seed(0)
    cfg = TransformerConfig(
        depth=depth, width=width, num_heads=heads, codebook_dim=d, scale_schedule=schedule, text_dim=TEXT_DIM
    )
    model = BitwiseTransformer(cfg).eval()
    # minimal stride-16 decoder, so that the timing is the transformer's
    tok_cfg = TokenizerConfig(
        codebook_dim=d,
        scale_schedule=schedule,
        base_channels=8,
        channel_multipliers=[1, 1, 1, 1, 1],
        num_res_blocks=1,
        num_groups=4,
    )
    tokenizer = BitwiseTokenizer(tok_cfg).eval()
    text = _RandomText()
    row = {"schedule": f"square-{side} ({len(schedule)} scales, {num_tokens(schedule)} tokens)", "d": d}
    for cfg_scale in (1.0, 4.0):
        ms = _interleaved_ms(
            {
                use_cache: lambda use_cache=use_cache, cfg_scale=cfg_scale: sample(
                    model, tokenizer, text, ["a prompt"], cfg=cfg_scale, seed=0, use_cache=use_cache
                )
                for use_cache in (True, False)
            },
            repeats,
        )
        row[f"cfg{cfg_scale:g}_cached_ms"] = ms[True]
        row[f"cfg{cfg_scale:g}_uncached_ms"] = ms[False]
        row[f"cfg{cfg_scale:g}_speedup"] = ms[False] / ms[True]
    H = side
    f_hat = torch.zeros(1, d, H, H)
    row["decode_ms"] = _median_ms(lambda: tokenizer.decode(f_hat), repeats)
    # for context: recomputing the *whole sequence* (not just the prefix) at every scale
    L = num_tokens(schedule)
    x = torch.zeros(1, L - 1, d)
    feats = text(["a prompt"])
    with torch.no_grad():
        full_ms = _median_ms(lambda: model(x, feats), repeats)
    row["full_sequence_pass_ms"] = full_ms
    return row


_HEAD_CHILD = r"""
import json, sys, time, torch
from infinity_lit.generator.transformer import BitwiseTransformer, TransformerConfig
head, d, C, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(int(sys.argv[5]))
torch.manual_seed(0)
x = torch.randn(1, tokens, C)
targets = torch.randint(0, 2, (1, tokens, d))
cfg = TransformerConfig(depth=1, width=C, num_heads=8, head=head, codebook_dim=d, scale_schedule=[(1, 1)], text_dim=8)
model = BitwiseTransformer(cfg)
head_params = sum(p.numel() for p in model.head.parameters())
t0 = time.perf_counter()
out = model.head(x)
logits = out.view(1, tokens, d, 2) if head == "ivc" else out
loss = model.loss(logits, targets)
loss.backward()
ms = 1000 * (time.perf_counter() - t0)
# weights + their gradients + AdamW's two moments, fp32
train_state_MB = 4 * 4 * head_params / 2**20
print(json.dumps({"head": head, "head_params": head_params, "fwd_bwd_ms": ms, "train_state_MB": train_state_MB, "logits_MB": logits.numel() * 4 / 2**20}))
"""


def bench_heads(d: int, C: int, tokens: int) -> list[dict]:
    rows = []
    for head in ("ivc", "index"):
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                _HEAD_CHILD,
                head,
                str(d),
                str(C),
                str(tokens),
                str(torch.get_num_threads()),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["train", "sample", "head"], default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's); 1 is steadier on a shared CPU",
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average at start {load}\n")
    if args.only in (None, "train"):
        rows = [
            bench_train("recipe 6/256/4, d=16, square-8 (121 tok), B=32", 6, 256, 4, 16, 8, 32, args.repeats),
            bench_train("12/512/8, d=32, square-16 (521 tok), B=8", 12, 512, 8, 32, 16, 8, args.repeats),
        ]
        print(
            "| config | params (M) | step fp32 (ms) | tokens/s fp32 | step bf16 (ms) | tokens/s bf16 | BSC (ms) |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['config']} | {r['params_M']:.1f} | {r['step_ms_fp32']:.0f} | {r['tokens_per_s_fp32']:.0f} | "
                f"{r['step_ms_bf16']:.0f} | {r['tokens_per_s_bf16']:.0f} | {r['bsc_ms']:.1f} |"
            )
        print()
        gc.collect()
    if args.only in (None, "sample"):
        r = bench_sample(12, 512, 8, 32, 16, args.repeats)
        print(f"Sampling one image, 12/512/8, d=32, {r['schedule']}:\n")
        print("| cfg | KV cache (ms) | uncached, prefix recomputed (ms) | speed-up |")
        print("|---|---|---|---|")
        for c in ("1", "4"):
            print(
                f"| {c} | {r[f'cfg{c}_cached_ms']:.0f} | {r[f'cfg{c}_uncached_ms']:.0f} | {r[f'cfg{c}_speedup']:.2f}× |"
            )
        print(
            f"\n(decode alone {r['decode_ms']:.0f} ms; one teacher-forced pass over the whole 521-token sequence "
            f"{r['full_sequence_pass_ms']:.0f} ms, so recomputing the whole sequence at each of the 7 scales would "
            f"cost ≈ {7 * r['full_sequence_pass_ms']:.0f} ms.)\n"
        )
        gc.collect()
    if args.only in (None, "head"):
        rows = bench_heads(d=16, C=768, tokens=521)
        print(
            "Heads at d=16, C=768, one 521-token sequence (forward + loss + backward, separate processes):\n"
        )
        print("| head | parameters | weights+grads+AdamW (MB) | logits, one sequence (MB) | fwd+bwd (ms) |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['head']} | {r['head_params']:,} | {r['train_state_MB']:.1f} | {r['logits_MB']:.2f} | "
                f"{r['fwd_bwd_ms']:.0f} |"
            )


if __name__ == "__main__":
    main()
