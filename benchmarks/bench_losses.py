"""Speed, memory and agreement of `mmcourse.objectives.losses` against open_clip (prints figures; no asserts).

    MMCOURSE_NUM_THREADS=2 python benchmarks/bench_losses.py [--quick]

1. Agreement: max |mmcourse - open_clip| over random batches (float64 and float32), for
   `clip_loss` vs `ClipLoss` and `siglip_loss` vs `SigLipLoss`, with and without output_dict.
2. Speed: median forward+backward time per call, mmcourse vs open_clip, for several batch sizes.
3. Memory: the (N, N) matrices dominate (logits and their log-softmax: 2 N² floats); the table
   prints that analytical figure per batch size, not a measurement.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from mmcourse.objectives import clip_loss, info_nce, siglip_loss
from mmcourse.utils import set_threads


def agreement(trials: int) -> None:
    try:
        from open_clip.loss import ClipLoss, SigLipLoss
    except ImportError:
        print("open_clip not installed: agreement skipped")
        return
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float64, torch.float32):
        worst = {"clip_loss": 0.0, "clip_loss(output_dict)": 0.0, "siglip_loss": 0.0, "info_nce vs clip": 0.0}
        for _ in range(trials):
            n = int(torch.randint(1, 300, (1,), generator=g))
            d = int(torch.randint(1, 128, (1,), generator=g))
            a = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
            b = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
            scale = float(torch.empty(1).uniform_(1, 100, generator=g))
            bias = float(torch.empty(1).uniform_(-15, 5, generator=g))
            worst["clip_loss"] = max(worst["clip_loss"], (clip_loss(a, b, scale) - ClipLoss()(a, b, scale)).abs().item())
            ours, ref = clip_loss(a, b, scale, output_dict=True), ClipLoss()(a, b, scale, output_dict=True)
            worst["clip_loss(output_dict)"] = max(worst["clip_loss(output_dict)"],
                                                  (ours["contrastive_loss"] - ref["contrastive_loss"]).abs().item())
            worst["siglip_loss"] = max(worst["siglip_loss"],
                                       (siglip_loss(a, b, scale, bias) - SigLipLoss()(a, b, scale, bias)).abs().item())
            sym = (info_nce(a, b, 1 / scale) + info_nce(b, a, 1 / scale)) / 2
            worst["info_nce vs clip"] = max(worst["info_nce vs clip"], (sym - clip_loss(a, b, scale)).abs().item())
        print(f"agreement, {trials} random batches (N 1-299, D 1-127, scale 1-100), {dtype}:")
        for k, v in worst.items():
            print(f"  max |difference| {k:24s} {v:.2e}")


def timeit(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def speed(sizes, d: int, repeats: int) -> None:
    try:
        from open_clip.loss import ClipLoss
    except ImportError:
        ClipLoss = None
    print(f"\nforward+backward, float32, D = {d}, median of {repeats} (threads = {torch.get_num_threads()}):")
    print(f"  {'N':>6s} {'clip_loss':>11s} {'open_clip':>11s} {'info_nce':>11s} {'siglip':>11s} {'logits memory':>14s}")
    for n in sizes:
        a = F.normalize(torch.randn(n, d), dim=-1).requires_grad_(True)
        b = F.normalize(torch.randn(n, d), dim=-1).requires_grad_(True)

        def run(loss_fn):
            return lambda: loss_fn().backward()

        t_clip = timeit(run(lambda: clip_loss(a, b, 14.3)), repeats)
        t_oc = timeit(run(lambda: ClipLoss()(a, b, 14.3)), repeats) if ClipLoss else float("nan")
        t_nce = timeit(run(lambda: info_nce(a, b, 0.07)), repeats)
        t_sig = timeit(run(lambda: siglip_loss(a, b, 10.0, -10.0)), repeats)
        mem = 2 * n * n * 4 / 2**20  # logits + log-softmax, float32
        print(f"  {n:6d} {1e3 * t_clip:9.2f}ms {1e3 * t_oc:9.2f}ms {1e3 * t_nce:9.2f}ms {1e3 * t_sig:9.2f}ms {mem:11.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials and sizes")
    args = parser.parse_args()
    set_threads()
    agreement(trials=20 if args.quick else 200)
    speed([256, 1024] if args.quick else [256, 1024, 4096], d=512, repeats=3 if args.quick else 7)


if __name__ == "__main__":
    main()
