"""What one training step of the lessons' Shapes CLIP costs on a CPU, and what two layout choices buy.

One step = forward of both towers on a batch of 256 Shapes scenes and captions, the symmetric CLIP
loss, backward, AdamW (the step `fit` takes 400 times in lessons 05 and 06). Three variants:

- captions padded to the tokenizer's `context_length` (20) and images stored channel by channel (NCHW);
- captions padded only to the batch's longest (`make_collate(pad_to_longest=True)`, the default: at
  most 14 of the 20 positions are real in a Shapes batch);
- that, and images stored pixel by pixel (channels last, NHWC: what `SmallCNN` does, the default).

Time is CPU time of the process per step (median and best of `--steps` interleaved steps), so other
work on the machine inflates it less than wall-clock time.

    MMCOURSE_NUM_THREADS=1 python benchmarks/bench_step.py [--steps 30]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader

import mmcourse.models.clip as clip_module
from mmcourse.data import Shapes, make_collate
from mmcourse.data.tokenizer import default_tokenizer
from mmcourse.models import CLIP
from mmcourse.models.configs import shapes_clip_config
from mmcourse.objectives.losses import clip_loss
from mmcourse.utils import set_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant (interleaved)")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    threads = set_threads()
    tokenizer = default_tokenizer()
    torch.manual_seed(0)
    model = CLIP(shapes_clip_config(tokenizer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scenes = Shapes("train", seed=0)
    fixed = next(iter(DataLoader(scenes, args.batch_size, collate_fn=make_collate(tokenizer, pad_to_longest=False))))
    longest = next(iter(DataLoader(scenes, args.batch_size, collate_fn=make_collate(tokenizer))))
    channels_last = clip_module._channels_last
    variants = {  # name: (batch, how SmallCNN stores the image)
        "padded to 20, NCHW": (fixed, lambda image: image),
        "padded to the longest, NCHW": (longest, lambda image: image),
        "padded to the longest, channels last (default)": (longest, channels_last),
    }

    def step(batch) -> None:
        image = model.encode_image(batch["image"], normalize=True)  # (B, D)
        text = model.encode_text(batch["input_ids"], batch["attention_mask"], normalize=True)  # (B, D)
        loss = clip_loss(image, text, model.logit_scale.exp())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    times: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for i in range(args.steps + 2):  # the first two rounds warm up
            for name, (batch, store) in variants.items():
                clip_module._channels_last = store
                start = time.process_time()
                step(batch)
                if i >= 2:
                    times[name].append(time.process_time() - start)
    finally:
        clip_module._channels_last = channels_last

    print(f"bench_step: one training step of the Shapes CLIP ({model.num_parameters():,} parameters), batch "
          f"{args.batch_size}, torch threads {threads}, {args.steps} steps per variant; CPU ms per step")
    base = statistics.median(times["padded to 20, NCHW"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:48s} median {1000 * median:6.1f}  best {1000 * min(values):6.1f}  "
              f"({median / base:.0%} of the first)")
    print(f"  caption length: {fixed['input_ids'].shape[1]} padded, {longest['input_ids'].shape[1]} longest real")


if __name__ == "__main__":
    main()
