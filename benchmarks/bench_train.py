"""How fast does the course's CLIP learn captioned digits on a CPU?

Trains the lessons' digits model (`mmcourse.recipes.clip.digits_clip_config` /
`digits_train_config`) with `mmcourse.training.loop.fit`, measuring after every epoch the zero-shot
top-1 accuracy on the held-out TEST images, classified with held-out caption templates that
training never used. Time is training time only (the evaluation after each epoch is excluded).

Targets (issue 4, on 2 CPU cores): >= 90% zero-shot accuracy within 5 s of training, and
>= 97% after at most 20 s. Also reported: a linear probe (logistic regression) on the frozen
image embeddings, an upper bound for what the image tower has learned.

    MMCOURSE_NUM_THREADS=2 python benchmarks/bench_train.py [--epochs 40] [--seed 0] [--shared-projection]
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from mmcourse.data import zero_shot_metadata as meta
from mmcourse.data import CaptionedDigits, digits_dataloaders
from mmcourse.evaluation import accuracy, build_zero_shot_classifier, linear_probe, zero_shot_logits
from mmcourse.models import CLIP
from mmcourse.recipes import digits_clip_config, digits_train_config
from mmcourse.data.tokenizer import default_tokenizer
from mmcourse.training import fit
from mmcourse.utils import set_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=None, help="default: digits_train_config().epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--shared-projection", action="store_true", help="one projection head for both towers")
    args = parser.parse_args()

    threads = set_threads()
    load_before = os.getloadavg()[0]
    tokenizer = default_tokenizer()
    config = digits_clip_config(tokenizer)
    config.shared_projection = args.shared_projection
    changes = {"progress": False, "device": "cpu", "seed": args.seed}
    if args.epochs:
        changes["epochs"] = args.epochs
    train_config = digits_train_config(**changes)
    train_loader, _, _ = digits_dataloaders(tokenizer, batch_size=args.batch_size, seed=args.seed)
    test = CaptionedDigits("test", seed=args.seed)  # held-out images, held-out templates

    def val_fn(model):
        weights = build_zero_shot_classifier(model, tokenizer, meta.DIGIT_CLASSNAMES, meta.DIGIT_TEMPLATES_HELDOUT)
        emb = model.encode_image(test.images, normalize=True)
        return {"top1": accuracy(zero_shot_logits(emb, weights), test.labels, topk=(1,))["top1"]}

    torch.manual_seed(args.seed)
    model = CLIP(config)
    wall = time.perf_counter()
    history = fit(model, train_loader, train_config, val_fn=val_fn)
    wall = time.perf_counter() - wall

    rows = history.val
    first90 = next((r for r in rows if r["top1"] >= 0.90), None)
    at20 = [r for r in rows if r["time"] <= 20.0]
    best20 = max((r["top1"] for r in at20), default=float("nan"))
    final = rows[-1]

    train_set = CaptionedDigits("train", seed=args.seed)
    with torch.no_grad():
        probe = linear_probe(model.encode_image(train_set.images), train_set.labels,
                             model.encode_image(test.images), test.labels)

    print(f"bench_train: digits CLIP, {model.num_parameters():,} parameters "
          f"(shared_projection={config.shared_projection}), {len(train_set)} training images, "
          f"batch {args.batch_size}, {train_config.epochs} epochs = {len(history.loss)} steps, lr {train_config.lr:g}")
    print(f"  torch threads {threads}, load average before {load_before:.1f}, after {os.getloadavg()[0]:.1f} "
          f"(on a shared machine the times are pessimistic)")
    print(f"  zero-shot top-1 on {len(test)} held-out test images, {len(meta.DIGIT_TEMPLATES_HELDOUT)} held-out templates:")
    print("   " + " ".join(f"{r['epoch']:.0f}:{100 * r['top1']:.1f}%@{r['time']:.1f}s" for r in rows))
    if first90 is None:
        print("  time to 90%: never reached")
    else:
        print(f"  time to 90%: {first90['time']:.1f} s (epoch {first90['epoch']:.0f})   target <= 5 s")
    print(f"  best accuracy within 20 s of training: {100 * best20:.1f}%   target >= 97%")
    print(f"  final accuracy: {100 * final['top1']:.1f}% after {final['time']:.1f} s of training "
          f"({wall:.1f} s wall clock with evaluation); final logit scale {history.logit_scale[-1]:.1f}")
    print(f"  linear probe on frozen image embeddings: {100 * probe.accuracy:.1f}%")


if __name__ == "__main__":
    main()
