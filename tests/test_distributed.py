"""Tests for mmcourse.objectives.distributed and the DDP entry point: 2 processes on gloo give the loss and
every gradient of one process's full batch, and equal open_clip's ClipLoss / SigLipLoss."""
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from mmcourse.objectives import (DistributedContrastiveLoss, clip_loss_distributed, local_loss_labels,
                                 siglip_loss_distributed, world_info)
from mmcourse.objectives import clip_loss, siglip_loss

WORLD = 2
N_LOCAL, D = 4, 6


def _rendezvous(tmp_path) -> str:
    """Where the spawned ranks meet: a file (a FileStore), not a TCP port picked here and bound later by rank 0,
    which another process (a kernel starting in the other test worker) can take in between."""
    return f"file://{tmp_path / 'rendezvous'}"


def _full_inputs():
    g = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(WORLD * N_LOCAL, D, generator=g, dtype=torch.float64), dim=-1)
    texts = F.normalize(torch.randn(WORLD * N_LOCAL, D, generator=g, dtype=torch.float64), dim=-1)
    return images, texts


def _leaves(rank, images, texts, scale, bias):
    rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
    return (images[rows].clone().requires_grad_(), texts[rows].clone().requires_grad_(),
            torch.tensor(scale, dtype=torch.float64, requires_grad=True),
            torch.tensor(bias, dtype=torch.float64, requires_grad=True))


def _mean(t):
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / WORLD


def _open_clip_loss():
    """open_clip's loss.py alone (it imports only torch): importing the open_clip package costs
    seconds per process."""
    import importlib.util
    from pathlib import Path

    folder = importlib.util.find_spec("open_clip").submodule_search_locations[0]
    spec = importlib.util.spec_from_file_location("open_clip_loss", Path(folder) / "loss.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _worker(rank, init_method):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD)
    try:
        oc = _open_clip_loss()
        ClipLoss, SigLipLoss = oc.ClipLoss, oc.SigLipLoss

        assert world_info() == (rank, WORLD)
        images, texts = _full_inputs()
        rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
        # one process, the full batch: the reference
        fi, ft = images.clone().requires_grad_(), texts.clone().requires_grad_()
        fs = torch.tensor(14.0, dtype=torch.float64, requires_grad=True)
        full = clip_loss(fi, ft, fs)
        full.backward()
        for local in (False, True):
            x, y, s, _ = _leaves(rank, images, texts, 14.0, 0.0)
            loss = clip_loss_distributed(x, y, s, local_loss=local)
            loss.backward()
            ox, oy, os_, _ = _leaves(rank, images, texts, 14.0, 0.0)
            ref = ClipLoss(local_loss=local, gather_with_grad=True, rank=rank, world_size=WORLD)(ox, oy, os_)
            ref.backward()
            torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
            for a, b in ((x, ox), (y, oy), (s, os_)):
                torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
            # averaged over ranks, as DDP averages: the full batch's loss and gradients
            torch.testing.assert_close(_mean(loss), full.detach())
            torch.testing.assert_close(x.grad / WORLD, fi.grad[rows])  # the exchange summed W copies
            torch.testing.assert_close(y.grad / WORLD, ft.grad[rows])
            torch.testing.assert_close(_mean(s.grad), fs.grad)
        # SigLIP: texts around the ring == open_clip's SigLipLoss (shift and bidir) == full batch
        fi.grad = ft.grad = None
        fs = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
        fb = torch.tensor(-10.0, dtype=torch.float64, requires_grad=True)
        full = siglip_loss(fi, ft, fs, fb)
        full.backward()
        x, y, s, b = _leaves(rank, images, texts, 10.0, -10.0)
        loss = siglip_loss_distributed(x, y, s, b)
        loss.backward()
        for impl in ("shift", "bidir"):
            ox, oy, os_, ob = _leaves(rank, images, texts, 10.0, -10.0)
            ref = SigLipLoss(rank=rank, world_size=WORLD, dist_impl=impl)(ox, oy, os_, ob)
            ref.backward()
            torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
            for p, q in ((x, ox), (y, oy), (s, os_), (b, ob)):
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(_mean(loss), full.detach())
        torch.testing.assert_close(x.grad / WORLD, fi.grad[rows])
        torch.testing.assert_close(y.grad / WORLD, ft.grad[rows])
        torch.testing.assert_close(_mean(s.grad), fs.grad)
        torch.testing.assert_close(_mean(b.grad), fb.grad)
        # without gradients through the gather, the other rank's share of the gradient is lost
        x, y, s, _ = _leaves(rank, images, texts, 14.0, 0.0)
        gathered = [torch.empty_like(y) for _ in range(WORLD)]
        dist.all_gather(gathered, y.detach())
        gathered[rank] = y
        all_texts = torch.cat(gathered)
        logits = s * x @ all_texts.T
        labels = local_loss_labels(N_LOCAL, rank)
        (F.cross_entropy(logits, labels) / 2).backward()
        assert not torch.allclose(y.grad, WORLD * ft.grad[rows] / 2)
        dist.barrier()  # no rank tears gloo down while another still talks to it (it can abort the process)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_and_open_clip(tmp_path):
    mp.start_processes(_worker, args=(_rendezvous(tmp_path),), nprocs=WORLD, start_method="spawn")


def test_one_process_falls_back_to_the_single_device_losses():
    images, texts = _full_inputs()
    assert world_info() == (0, 1)
    torch.testing.assert_close(clip_loss_distributed(images, texts, 14.0, local_loss=True), clip_loss(images, texts, 14.0))
    torch.testing.assert_close(siglip_loss_distributed(images, texts, 10.0, -10.0), siglip_loss(images, texts, 10.0, -10.0))
    assert local_loss_labels(4, 1).tolist() == [4, 5, 6, 7]
    with pytest.raises(ValueError, match="n_local >= 1"):
        local_loss_labels(0, 1)
    with pytest.raises(ValueError, match="mismatched batch size"):
        clip_loss_distributed(images, texts[:3], 14.0)
    assert "local_loss=True" in repr(DistributedContrastiveLoss())


@pytest.mark.slow
def test_torchrun_entry_point_equals_one_process(tmp_path):
    """`torchrun --standalone --nproc_per_node 2 -m mmcourse.training.ddp` with the same fit: the first step's loss
    and every gradient equal one process on the two ranks' batches together."""
    from mmcourse.models import CLIP
    from mmcourse.training import clip_loss_fn

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MMCOURSE_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "mmcourse.training.ddp", "--steps", "1", "--batch-size", "16", "--check-dir", str(tmp_path),
           "--out", str(tmp_path / "history.json")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    history = json.loads((tmp_path / "history.json").read_text())
    assert history["world_size"] == 2 and history["global_batch"] == 32 and history["steps"] == 1
    init = torch.load(tmp_path / "init.pt", weights_only=False)
    model = CLIP(init["config"])
    model.load_state_dict(init["model"])
    model.train()
    batches = [torch.load(tmp_path / f"batch_rank{r}.pt") for r in range(2)]
    batch = {k: torch.cat([b[k] for b in batches]) for k in ("image", "input_ids", "attention_mask")}
    loss = clip_loss_fn(model, batch)
    loss.backward()
    assert history["first_loss"] == pytest.approx(loss.item(), rel=1e-5)  # not world_size times too small
    grads = torch.load(tmp_path / "grads.pt")
    assert set(grads) == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


# ------------------------------------------------------------------ unequal local batches (2 and 3 ranks)
def _unequal_worker(rank, sizes, init_method):
    world = len(sizes)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        from mmcourse.data import PerProcessGenerator
        from mmcourse.objectives.distributed import gather_sizes

        def mean(t):
            t = t.detach().clone()
            dist.all_reduce(t)
            return t / world

        n_all, start = sum(sizes), sum(sizes[:rank])
        rows = slice(start, start + sizes[rank])
        g = torch.Generator().manual_seed(3)
        images = F.normalize(torch.randn(n_all, D, generator=g, dtype=torch.float64), dim=-1)
        texts = F.normalize(torch.randn(n_all, D, generator=g, dtype=torch.float64), dim=-1)
        assert gather_sizes(images[rows], texts[rows]) == list(sizes)
        assert local_loss_labels(sizes[rank], rank, sizes=list(sizes)).tolist() == list(range(start, start + sizes[rank]))

        def leaves(scale, bias):
            return (images[rows].clone().requires_grad_(), texts[rows].clone().requires_grad_(),
                    torch.tensor(scale, dtype=torch.float64, requires_grad=True),
                    torch.tensor(bias, dtype=torch.float64, requires_grad=True))

        # the reference: one process, the full batch of sum(sizes) pairs
        fi, ft = images.clone().requires_grad_(), texts.clone().requires_grad_()
        fs = torch.tensor(14.0, dtype=torch.float64, requires_grad=True)
        full = clip_loss(fi, ft, fs)
        full.backward()
        for local in (False, True):
            x, y, s, _ = leaves(14.0, 0.0)
            loss = clip_loss_distributed(x, y, s, local_loss=local)
            loss.backward()
            torch.testing.assert_close(mean(loss), full.detach())  # DDP averages the ranks' losses and gradients
            torch.testing.assert_close(x.grad / world, fi.grad[rows])  # the gather's backward summed W copies
            torch.testing.assert_close(y.grad / world, ft.grad[rows])
            torch.testing.assert_close(mean(s.grad), fs.grad)
        fi.grad = ft.grad = None
        fs = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
        fb = torch.tensor(-10.0, dtype=torch.float64, requires_grad=True)
        full = siglip_loss(fi, ft, fs, fb)
        full.backward()
        x, y, s, b = leaves(10.0, -10.0)
        loss = siglip_loss_distributed(x, y, s, b)
        loss.backward()
        torch.testing.assert_close(mean(loss), full.detach())
        torch.testing.assert_close(x.grad / world, fi.grad[rows])
        torch.testing.assert_close(y.grad / world, ft.grad[rows])
        torch.testing.assert_close(mean(s.grad), fs.grad)
        torch.testing.assert_close(mean(b.grad), fb.grad)

        # bad inputs on ONE rank: every rank raises, naming each rank's size, and the group stays usable
        last = world - 1
        cases = [(images[rows][:0] if rank == last else images[rows], texts[rows][:0] if rank == last else texts[rows],
                  "at least one pair"),
                 (images[rows][:, :D - 1] if rank == last else images[rows],
                  texts[rows][:, :D - 1] if rank == last else texts[rows], "differ in width"),
                 (images[rows] * (float("nan") if rank == last else 1.0), texts[rows], rf"rank\(s\) \[{last}\]")]
        for xi, yi, match in cases:
            for fn in (lambda: clip_loss_distributed(xi, yi, 14.0, local_loss=True),
                       lambda: siglip_loss_distributed(xi, yi, 10.0, -10.0)):
                with pytest.raises(ValueError, match=match) as error:
                    fn()
                for r, n in enumerate(sizes):
                    n_shown = 0 if (r == last and match == "at least one pair") else n
                    assert f"rank {r}: {n_shown} pairs" in str(error.value), str(error.value)
        torch.testing.assert_close(mean(clip_loss_distributed(images[rows], texts[rows], 14.0)),
                                   clip_loss(images, texts, 14.0))

        # a seeded transform's generator draws differently on each rank (rank 0: what manual_seed draws)
        draws = torch.rand(4, generator=PerProcessGenerator(0).get())
        everyone = [torch.empty_like(draws) for _ in range(world)]
        dist.all_gather(everyone, draws)
        assert len({tuple(d.tolist()) for d in everyone}) == world
        assert torch.equal(everyone[0], torch.rand(4, generator=torch.Generator().manual_seed(0)))
        dist.barrier()  # as above
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("sizes", [(4, 3), (4, 2, 3)])
def test_unequal_local_batches_give_the_full_batch_loss_and_gradients(sizes, tmp_path):
    """2 and 3 gloo processes with unequal local batches: padding + mask in the exchange, each rank's
    share scaled by W / N, so the mean over ranks is the single-process loss of all pairs and the
    gradients are its gradients; a bad batch on one rank is a ValueError on every rank."""
    mp.start_processes(_unequal_worker, args=(sizes, _rendezvous(tmp_path)), nprocs=len(sizes), start_method="spawn")
