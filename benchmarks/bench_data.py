"""How fast are the course's datasets and tokenizer?

Measures, best of `--repeats` runs (wall-clock, one process, after imports):
- building each `CaptionedDigits` split and each `Shapes` split (one and two objects);
- one epoch of the digits training `DataLoader` (batch 256: item reads, caption sampling,
  tokenization, collation), which every training epoch pays on top of the model;
- `default_tokenizer()(captions)` for a batch of 256 captions, cold (first sight) and cached.

Target (issue 4): every dataset constructs in < 1 s.

    MMCOURSE_NUM_THREADS=1 python benchmarks/bench_data.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from mmcourse.data import CaptionedDigits, Shapes, digits_dataloaders, load_digit_arrays
from mmcourse.data.tokenizer import build_tokenizer, caption_corpus, default_tokenizer
from mmcourse.utils import set_threads


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    threads = set_threads()
    load = os.getloadavg()[0]
    note = " (busy machine: figures are pessimistic)" if load > (os.cpu_count() or 1) else ""
    print(f"threads={threads}, load average {load:.1f}{note}")

    start = time.perf_counter()
    load_digit_arrays()
    print(f"{'load the bundled digits (first call)':45s} {time.perf_counter() - start:7.3f} s")
    rows = []
    for split in ("train", "val", "test"):
        rows.append((f"CaptionedDigits({split!r})", lambda s=split: CaptionedDigits(s)))
    rows.append(("CaptionedDigits('train', image_size=16)", lambda: CaptionedDigits("train", image_size=16)))
    for split in ("train", "val", "test"):
        rows.append((f"Shapes({split!r})  [{Shapes.default_sizes[split]} scenes]", lambda s=split: Shapes(s)))
        rows.append((f"Shapes({split!r}, two_objects=True)", lambda s=split: Shapes(s, two_objects=True)))
    rows.append(("build_tokenizer(caption_corpus())", lambda: build_tokenizer(caption_corpus())))
    for name, fn in rows:
        print(f"{name:45s} {best_of(args.repeats, fn):7.3f} s")

    tok = default_tokenizer()
    train, _, _ = digits_dataloaders(tok, batch_size=256)
    torch.manual_seed(0)
    print(f"{'one digits training epoch (5 batches of 256)':45s} {best_of(args.repeats, lambda: [b for b in train]):7.3f} s")
    captions = [train.dataset[i]["caption"] for i in range(256)]
    cold = best_of(1, lambda: build_tokenizer(caption_corpus())(captions))
    warm = best_of(args.repeats, lambda: tok(captions))
    print(f"{'tokenize 256 captions (new tokenizer, uncached)':45s} {cold:7.3f} s  (includes building it)")
    print(f"{'tokenize 256 captions (cached)':45s} {warm * 1000:7.2f} ms")


if __name__ == "__main__":
    main()
