"""Forward + backward time and peak memory of the CLIP loss at large N, against the matmul floor.

    MMCOURSE_NUM_THREADS=2 python benchmarks/bench_scaling.py [--sizes 1024 4096 16384] [--dim 256]

For each N (D = 256, float32, L2-normalised random embeddings, logit_scale 14.3 requiring a
gradient), with `torch.utils.benchmark`:

- floor: the three (N, N, D) matrix products alone (logits = X·Yᵀ, G·Y, Gᵀ·X), the least
  work any implementation of the loss and its gradients must do;
- clip_loss (`mmcourse.objectives.losses`), fused_clip_loss and blocked_clip_loss
  (`mmcourse.objectives.blockwise`) and open_clip's `ClipLoss`: forward + backward;
- peak memory of each call (`mmcourse.training.memory.peak_memory`), and the largest difference of each
  loss and gradient from `clip_loss`.

Ratios (time / floor) are what to compare: absolute times depend on the machine and on other
work running at the same time.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import torch.utils.benchmark as benchmark

from mmcourse.objectives import blocked_clip_loss, fused_clip_loss
from mmcourse.objectives import clip_loss
from mmcourse.training import memory_measurable, peak_memory
from mmcourse.utils import set_threads


def _inputs(n: int, d: int):
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_()
    y = F.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_()
    return x, y, torch.tensor(1 / 0.07, requires_grad=True)


def implementations():
    impls = {"clip_loss": clip_loss, "fused": fused_clip_loss, "blocked": blocked_clip_loss}
    try:
        from open_clip.loss import ClipLoss

        impls["open_clip"] = ClipLoss()
    except ImportError:  # pragma: no cover
        print("open_clip not installed: its column is skipped")
    return impls


def run(sizes, d: int, min_run_time: float) -> list[dict]:
    impls = implementations()
    rows = []
    for n in sizes:
        x, y, s = _inputs(n, d)
        xd, yd = x.detach(), y.detach()

        def floor():
            g = xd @ yd.T  # (N, N)
            return g @ yd, g.T @ xd  # (N, D) each

        def step(fn):
            def call():
                x.grad = y.grad = s.grad = None
                fn(x, y, s).backward()
            return call

        calls = {"floor": floor, **{name: step(fn) for name, fn in impls.items()}}
        row = {"N": n}
        for name, call in calls.items():
            call()  # warm up (first-call allocations)
            timer = benchmark.Timer(stmt="call()", globals={"call": call}, num_threads=torch.get_num_threads(),
                                    label="clip loss fwd+bwd", sub_label=f"N={n}", description=name)
            m = timer.blocked_autorange(min_run_time=min_run_time) if n <= 4096 else timer.timeit(1)
            row[name] = m.median
            if memory_measurable():
                row[name + "_mem"] = peak_memory(call)
        # agreement with clip_loss
        ref = clip_loss(x, y, s)
        ref_grads = torch.autograd.grad(ref, (x, y, s))
        for name, fn in impls.items():
            if name == "clip_loss":
                continue
            loss = fn(x, y, s)
            grads = torch.autograd.grad(loss, (x, y, s))
            row[name + "_dloss"] = (loss - ref).abs().item()
            row[name + "_dgrad"] = max((a - b).abs().max().item() for a, b in zip(grads, ref_grads))
        rows.append(row)
        print_row(row, impls)
    return rows


def print_row(row: dict, impls) -> None:
    n, floor = row["N"], row["floor"]
    print(f"\nN = {n}: matmul floor {floor:.3f} s" + (f", {row['floor_mem'] / 2**20:.0f} MiB" if "floor_mem" in row else ""))
    print(f"  {'loss':<10} {'time (s)':>9} {'x floor':>8} {'peak MiB':>9} {'|dloss|':>9} {'|dgrad|':>9}")
    for name in impls:
        mem = f"{row[name + '_mem'] / 2**20:9.1f}" if name + "_mem" in row else f"{'-':>9}"
        dl = f"{row[name + '_dloss']:9.1e}" if name + "_dloss" in row else f"{'(ref)':>9}"
        dg = f"{row[name + '_dgrad']:9.1e}" if name + "_dgrad" in row else f"{'(ref)':>9}"
        print(f"  {name:<10} {row[name]:9.3f} {row[name] / floor:8.2f} {mem} {dl} {dg}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--min-run-time", type=float, default=2.0, help="seconds per measurement (N <= 4096)")
    args = parser.parse_args()
    set_threads()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, D = {args.dim}, float32")
    rows = run(args.sizes, args.dim, args.min_run_time)
    print("\nsummary (time / floor; memory / clip_loss's):")
    for row in rows:
        parts = [f"{k} {row[k] / row['floor']:.2f}x" for k in ("clip_loss", "fused", "blocked", "open_clip") if k in row]
        if "open_clip" in row:
            parts.append(f"fused vs open_clip {row['open_clip'] / row['fused']:.2f}x faster")
        if "blocked_mem" in row and row.get("clip_loss_mem"):
            parts.append(f"blocked memory {row['blocked_mem'] / row['clip_loss_mem']:.4f} of clip_loss's")
        print(f"  N={row['N']}: " + ", ".join(parts))


if __name__ == "__main__":
    main()
