"""Train the digits CLIP on several processes with the course's one loop, `mmcourse.training.loop.fit`.

Launch with PyTorch's launcher (one process per CPU core or GPU; `--standalone`: one machine, on a free
port the launcher holds; for several machines, `--nnodes`, `--node_rank` and `--master_addr` instead)::

    torchrun --standalone --nproc_per_node 2 -m mmcourse.training.ddp --epochs 3 --batch-size 64

Each process: joins the process group (`gloo` on CPU, `nccl` on CUDA), reads its share of the
training set (`DistributedSampler`: rank r gets every W-th sample of one shuffled order),
wraps the model in `DistributedDataParallel` (which averages the gradients over processes) and
calls `fit` with `DistributedContrastiveLoss` (embeddings gathered with gradients, so the
loss and its gradients are those of the global batch of W × batch-size pairs). Rank 0 writes
the checkpoint and, with `--out`, the history as JSON. `--check-dir DIR` additionally saves the
initial weights, every rank's first batch and the gradients of the first step, to compare
with one process on the concatenated batch (see `tests/test_distributed.py` and lesson 10).

The image tower is a ViT by default: BatchNorm (the CNN tower) normalises with each process's
statistics, so its gradients are not the global batch's (use `SyncBatchNorm` on GPUs).
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from mmcourse.training.types import Callback
from mmcourse.objectives.distributed import DistributedContrastiveLoss
from mmcourse.training.types import TrainConfig
from mmcourse.training.loop import fit
from mmcourse.utils import seed_everything


class _StopAfter(Callback):
    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, state) -> None:
        if state.global_step >= self.steps:
            state.stop = True


class _SaveFirstStep(Callback):
    """Saves every rank's first batch, and the gradients after the first step (rank 0)."""

    def __init__(self, folder: Path, rank: int):
        self.folder, self.rank = folder, rank

    def on_step_end(self, state) -> None:
        if state.global_step == 1 and self.rank == 0:
            grads = {n: p.grad.detach().clone() for n, p in state.model.named_parameters() if p.grad is not None}
            torch.save(grads, self.folder / "grads.pt")


def digits_vit_config(tokenizer):
    """A small ViT + Transformer CLIP for 8x8 digits (no BatchNorm, so DDP is exact)."""
    from mmcourse.models.clip import CLIPConfig

    return CLIPConfig(image_encoder="vit", image_size=8, in_channels=1, image_width=64, vit_patch_size=2,
                      vit_layers=2, vit_heads=4, vocab_size=tokenizer.vocab_size,
                      context_length=tokenizer.context_length, text_width=64, text_layers=2, text_heads=4,
                      pad_token_id=tokenizer.pad_token_id, embed_dim=64)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="torchrun --nproc_per_node N -m mmcourse.training.ddp", description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="pairs per process (global batch: × world size)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--image-encoder", choices=["vit", "cnn"], default="vit")
    parser.add_argument("--global-loss", action="store_true", help="every rank builds the full N×N logits "
                        "(default: open_clip's --local-loss, n×N per rank)")
    parser.add_argument("--siglip", action="store_true", help="the sigmoid loss, texts passed around the ring")
    parser.add_argument("--steps", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the history (rank 0) as JSON here")
    parser.add_argument("--check-dir", type=Path, default=None,
                        help="save initial weights, each rank's first batch and the first step's gradients here")
    args = parser.parse_args(argv)
    if "RANK" not in os.environ:
        parser.error("launch with torchrun (it sets RANK, WORLD_SIZE, MASTER_ADDR), e.g. "
                     "torchrun --standalone --nproc_per_node 2 -m mmcourse.training.ddp")

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if cuda else torch.device("cpu")
    if not cuda:
        torch.set_num_threads(int(os.environ.get("MMCOURSE_NUM_THREADS", "1")))
    try:
        from mmcourse.data import CaptionedDigits, make_collate
        from mmcourse.models.clip import CLIP
        from mmcourse.models.configs import digits_clip_config
        from mmcourse.data.tokenizer import default_tokenizer

        tokenizer = default_tokenizer()
        config = digits_vit_config(tokenizer) if args.image_encoder == "vit" else digits_clip_config(tokenizer)
        if args.siglip:
            config = replace(config, init_logit_scale=float(torch.log(torch.tensor(10.0))), init_logit_bias=-10.0)
        train_set = CaptionedDigits("train", seed=args.seed)
        sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed,
                                     drop_last=True)
        loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, drop_last=True,
                            collate_fn=make_collate(tokenizer))
        torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
        model = CLIP(config).to(device)
        callbacks = [_StopAfter(args.steps)] if args.steps else []
        if args.check_dir is not None:
            args.check_dir.mkdir(parents=True, exist_ok=True)
            if rank == 0:
                torch.save({"config": config, "model": model.state_dict()}, args.check_dir / "init.pt")
            seed_everything(args.seed)  # as fit does first: the batch drawn here is the one it trains on
            first = next(iter(loader))
            torch.save({k: v for k, v in first.items() if isinstance(v, torch.Tensor)},
                       args.check_dir / f"batch_rank{rank}.pt")
            callbacks.append(_SaveFirstStep(args.check_dir, rank))
        ddp = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
        train_config = TrainConfig(epochs=args.epochs, lr=args.lr, warmup_fraction=0.05, seed=args.seed,
                                   device=str(device), progress=rank == 0)
        history = fit(ddp, loader, train_config, loss_fn=DistributedContrastiveLoss(local_loss=not args.global_loss),
                      callbacks=callbacks, checkpoint_path=args.checkpoint)
        if rank == 0:
            summary = {"world_size": world, "global_batch": world * args.batch_size, "steps": len(history.loss),
                       "first_loss": history.loss[0], "last_loss": history.loss[-1]}
            print(json.dumps(summary))
            if args.out is not None:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({**summary, "history": history.to_dict()}))
        # Every rank reaches this point before any tears the process group down: a rank that destroyed gloo
        # while another was still sending to it could abort ("terminate called without an active exception").
        dist.barrier()
        return history.to_dict()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
