"""Tokenizer throughput: images/s of encode → multi-scale BSQ → decode (``BitwiseTokenizer.forward``, eval).

    python benchmarks/tokenizer_throughput.py                    # the grid below, CPU, markdown table
    python benchmarks/tokenizer_throughput.py --sizes 64 --dims 16 --batches 8 --json

Grid: image side 64 (the OpenMoji recipe's network: stride 8, 8×8 latent, schedule [1,2,4,6,8]) and 256
(stride 16, 16×16 latent, the reference 7-scale schedule [1,2,4,6,8,12,16], base width 64); codebook dimension d ∈ {16,
32}; batch 1 and 8; fp32 and bf16 autocast (the quantizer stays fp32 inside autocast). Weights are random
(the cost does not depend on them); images are random in [-1, 1]. Timing by
``torch.utils.benchmark.Timer.blocked_autorange`` under ``torch.no_grad``; the machine's load average is
printed with the table, since other processes change CPU numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import torch
from torch.utils import benchmark

from infinity_lit.quantizer import square_schedule
from infinity_lit.tokenizer import BitwiseTokenizer, TokenizerConfig

#: Network per image side: (base_channels, channel_multipliers, num_res_blocks). 64²: the OpenMoji recipe's
#: (experiments/tokenizer/openmoji64.yaml); 256²: stride 16 with two blocks per level.
NETWORKS = {64: (32, [1, 2, 4, 4], 1), 256: (64, [1, 1, 2, 2, 4], 2)}


def build(size: int, codebook_dim: int) -> BitwiseTokenizer:
    base, mults, blocks = NETWORKS[size]
    stride = 2 ** (len(mults) - 1)
    config = TokenizerConfig(
        codebook_dim=codebook_dim,
        scale_schedule=square_schedule(size // stride),
        base_channels=base,
        channel_multipliers=mults,
        num_res_blocks=blocks,
    )
    torch.manual_seed(0)
    return BitwiseTokenizer(config).eval()


def measure(
    size: int, codebook_dim: int, batch: int, precision: str, device: str, min_run_time: float
) -> dict:
    model = build(size, codebook_dim).to(device)
    images = (torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]

    def step() -> None:
        with (
            torch.no_grad(),
            torch.autocast(device_type=device, dtype=dtype or torch.float32, enabled=dtype is not None),
        ):
            model(images)

    step()  # warm-up (oneDNN primitive creation)
    timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return {
        "image_size": size,
        "codebook_dim": codebook_dim,
        "batch": batch,
        "precision": precision,
        "ms_per_batch": m.median * 1e3,
        "images_per_s": batch / m.median,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256], choices=sorted(NETWORKS))
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--min_run_time", type=float, default=2.0, help="seconds of timing per measurement")
    parser.add_argument(
        "--json", action="store_true", help="one JSON line per measurement instead of a table"
    )
    args = parser.parse_args()

    load = os.getloadavg()
    print(
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, device {args.device}, load average {load[0]:.2f} {load[1]:.2f}"
    )
    if not args.json:
        print("| image | d | batch | precision | params (M) | ms / batch | images / s |")
        print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for d in args.dims:
            for batch in args.batches:
                for precision in args.precisions:
                    r = measure(size, d, batch, precision, args.device, args.min_run_time)
                    if args.json:
                        print(json.dumps(r))
                    else:
                        print(
                            f"| {size}² | {d} | {batch} | {precision} | {r['params_m']:.1f} | "
                            f"{r['ms_per_batch']:.1f} | {r['images_per_s']:.1f} |",
                            flush=True,
                        )
    load = os.getloadavg()
    print(f"# load average after: {load[0]:.2f} {load[1]:.2f}")


if __name__ == "__main__":
    main()
