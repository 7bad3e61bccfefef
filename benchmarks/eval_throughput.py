"""Scoring throughput: images/s of the FID Inception features and of CLIP score (ViT-B/32 shape).

    python benchmarks/eval_throughput.py                      # CPU, defaults below
    python benchmarks/eval_throughput.py --device cuda --num_images 512 --batch_size 64

Inception: torch-fidelity's ``FeatureExtractorInceptionV3`` with the offline converted weights, uint8
(B, 3, S, S) inputs (random pixels; the cost does not depend on content), resized to 299 inside.
CLIP: a randomly initialised ``clip.model.CLIP`` with ViT-B/32's shape (12 × 768 vision, 12 × 512 text,
224 px, 151M parameters; no weights are downloaded), scored through ``ClipScorer`` including CLIP's PIL
preprocessing and the tokenizer, i.e. what ``eval score`` does per image. FID distance: the
seconds torch-fidelity needs to turn two 2048-d feature sets into a FID (dominated by the eigenvalues of
a 2048×2048 matrix, independent of the image count). Prints one JSON line per measurement (after a
warm-up batch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_inception(device: str, num_images: int, batch_size: int, size: int) -> dict:
    from infinity_lit.metrics.inception import inception_features, load_inception

    model = load_inception(device=device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (num_images, 3, size, size), generator=g, dtype=torch.uint8)
    inception_features(model, images[:batch_size].to(device), batch_size)  # warm-up
    _sync(device)
    start = time.perf_counter()
    inception_features(model, images.to(device), batch_size)
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "what": "inception_pool3",
        "image_size": size,
        "images_per_s": num_images / seconds,
        "seconds": seconds,
    }


def bench_fid_distance(device: str, num_images: int, batch_size: int, size: int) -> dict:
    """The distance itself: torch-fidelity's statistics + eigenvalue-based trace sqrt on 2048-d features."""
    from infinity_lit.metrics.fid import fid_from_features

    g = torch.Generator().manual_seed(0)
    f1 = torch.randn(max(num_images, 2), 2048, generator=g, dtype=torch.float64)
    f2 = torch.randn(max(num_images, 2), 2048, generator=g, dtype=torch.float64)
    start = time.perf_counter()
    fid_from_features(f1, f2)
    return {
        "what": "fid_from_2048d_features",
        "num_features": len(f1),
        "seconds": time.perf_counter() - start,
    }


def bench_clip(device: str, num_images: int, batch_size: int, size: int) -> dict:
    from infinity_lit.metrics.clip_score import ClipScorer, _import_clip

    clip = _import_clip()
    torch.manual_seed(0)
    model = clip.model.CLIP(
        embed_dim=512,
        image_resolution=224,
        vision_layers=12,
        vision_width=768,
        vision_patch_size=32,
        context_length=77,
        vocab_size=49408,
        transformer_width=512,
        transformer_heads=8,
        transformer_layers=12,
    )
    model = model.to(device).eval()
    preprocess = clip.clip._transform(224)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (num_images, 3, size, size), generator=g, dtype=torch.uint8)
    captions = [f"a photo of emoji number {i}, colourful and flat" for i in range(num_images)]
    scorer = ClipScorer(model, preprocess)
    scorer.update(images[:batch_size], captions[:batch_size])  # warm-up
    _sync(device)
    start = time.perf_counter()
    for i in range(0, num_images, batch_size):
        scorer.update(images[i : i + batch_size], captions[i : i + batch_size])
    _sync(device)
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    return {
        "what": "clip_score_vit_b32_shape",
        "params_M": round(params / 1e6, 1),
        "image_size": size,
        "images_per_s": num_images / seconds,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num_images", type=int, default=64, help="images per measurement")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=256, help="side of the uint8 input images")
    parser.add_argument("--only", choices=["inception", "fid", "clip"], default=None)
    args = parser.parse_args()
    env = {
        "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "batch_size": args.batch_size,
        "num_images": args.num_images,
    }
    with torch.inference_mode():
        for name, fn in (("inception", bench_inception), ("fid", bench_fid_distance), ("clip", bench_clip)):
            if args.only in (None, name):
                result = fn(args.device, args.num_images, args.batch_size, args.image_size)
                print(json.dumps({**result, **env}), flush=True)


if __name__ == "__main__":
    main()
