"""Sync-classifier pairs scored per second for the K=31 evaluation protocol.

Scoring all K x K (audio, video) pairs of a video with each encoder run once per clip (``score_matrix``)
versus a naive forward per pair (both encoders rerun for every pair), in the same process. The naive rate is
measured on a sample of pairs (it does not depend on which pairs).

    python benchmarks/bench_sync.py                  # CPU, 112x112 frames
    python benchmarks/bench_sync.py --device cuda --image-size 224 --videos 8
"""

from __future__ import annotations

import argparse
import json

import torch
from timing import median_seconds

from avsync_ray.models.sync_classifier import SyncClassifier


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--clips", type=int, default=31)
    parser.add_argument("--videos", type=int, default=1)
    parser.add_argument("--naive-pairs", type=int, default=8, help="pairs timed for the per-pair baseline")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    model = SyncClassifier(image_size=args.image_size).eval().to(args.device, dtype)
    generator = torch.Generator().manual_seed(0)
    audio = torch.randn(args.videos, args.clips, 1, 128, 204, generator=generator).to(args.device, dtype)
    video = torch.randn(args.videos, args.clips, 3, 12, args.image_size, args.image_size, generator=generator).to(args.device, dtype)

    matrix_s = median_seconds(lambda: model.score_matrix(audio, video), args.device, args.repeats)
    pairs = [(i % args.clips, (i * 7 + 3) % args.clips) for i in range(args.naive_pairs)]

    def naive():
        for p, q in pairs:
            model(audio[:, p], video[:, q])

    naive_s = median_seconds(naive, args.device, args.repeats)
    total_pairs = args.videos * args.clips**2
    matrix_rate = total_pairs / matrix_s
    naive_rate = args.videos * len(pairs) / naive_s
    result = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": args.dtype,
        "image_size": args.image_size,
        "videos": args.videos,
        "clips": args.clips,
        "pairs_per_s_score_matrix": matrix_rate,
        "pairs_per_s_per_pair_forward": naive_rate,
        "speedup": matrix_rate / naive_rate,
        "seconds_per_video_31x31": matrix_s / args.videos,
    }
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)
    print(json.dumps(result))
    print(
        f"{result['device']} {args.dtype} {args.image_size}px: score_matrix {matrix_rate:,.0f} pairs/s, "
        f"per-pair forward {naive_rate:,.1f} pairs/s, speed-up {matrix_rate / naive_rate:,.0f}x"
    )


if __name__ == "__main__":
    main()
