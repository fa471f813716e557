"""Tests for mmcourse.training.loop: parameter groups, schedule, clamp, determinism, exact resume, learning."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from mmcourse.models import CLIP, CLIPConfig
from mmcourse.training import (Callback, History, LivePlot, TrainConfig, clamp_logit_scale, clip_loss_fn, fit,
                               load_checkpoint, lr_factor, param_groups)

TINY = dict(image_width=32, text_width=32, embed_dim=16, cnn_channels=(8, 16), text_heads=2, vocab_size=16,
            context_length=6, text_layers=1)


class ToyPairs(Dataset):
    """Ten classes; image = class prototype + fresh noise each time (a random augmentation that
    uses the global RNG); caption = [SOT, class word, (filler), EOT] right-padded."""

    def __init__(self, n=96, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 10, (n,), generator=g)
        self.prototypes = torch.randn(10, 1, 8, 8, generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        y = int(self.labels[i])
        image = self.prototypes[y] + 0.3 * torch.randn(1, 8, 8)
        n = 3 + (y % 2)
        ids = torch.zeros(5, dtype=torch.long)
        ids[:n] = torch.tensor([1, 4 + y, 14, 2][-n:] if n == 3 else [1, 4 + y, 14, 2])
        mask = (torch.arange(5) < n).long()
        return {"image": image, "input_ids": ids, "attention_mask": mask, "label": y}


def make_run(seed=0, dropout=0.0, n=96, batch_size=32, generator=False):
    torch.manual_seed(seed)
    model = CLIP(CLIPConfig(**TINY, dropout=dropout))
    gen = torch.Generator().manual_seed(123) if generator else None
    loader = DataLoader(ToyPairs(n), batch_size=batch_size, shuffle=True, generator=gen)
    return model, loader


CFG = dict(epochs=3, lr=3e-3, progress=False, device="cpu", warmup_steps=2)


# -- pieces --------------------------------------------------------------------------------------

def test_param_groups_follow_open_clip():
    model = CLIP(CLIPConfig(**TINY))
    decay, no_decay = param_groups(model, 0.2)
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    d, nd = set(decay["names"]), set(no_decay["names"])
    assert {"visual.convs.0.weight", "visual.fc.weight", "text.token_embedding.weight", "text.positional_embedding",
            "text.blocks.0.attn.qkv.weight", "text.blocks.0.mlp.fc.weight", "image_projection.weight",
            "text_projection.weight"} <= d
    assert {"logit_scale", "visual.convs.1.weight", "visual.convs.1.bias", "visual.fc.bias",
            "text.blocks.0.ln_1.weight", "text.blocks.0.attn.qkv.bias", "text.ln_final.weight"} <= nd
    params = dict(model.named_parameters())
    assert d | nd == set(params) and not d & nd
    assert all(params[n].ndim >= 2 for n in d) and all(params[n].ndim < 2 for n in nd)
    # frozen parameters are left out; a shared projection appears once
    model.logit_scale.requires_grad_(False)
    shared = CLIP(CLIPConfig(**TINY, shared_projection=True))
    assert "logit_scale" not in param_groups(model, 0.1)[1]["names"]
    names = param_groups(shared, 0.1)[0]["names"]
    assert names.count("image_projection.weight") == 1 and "text_projection.weight" not in names


def test_lr_factor_warmup_then_cosine():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100) == pytest.approx(1.0)  # warmup ends at the peak
    assert lr_factor(10, 10, 100) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.5)  # half-way through the cosine
    assert lr_factor(100, 10, 100) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0, 0, 10) == pytest.approx(1.0)


def test_history_lr_follows_schedule():
    model, loader = make_run()
    h = fit(model, loader, TrainConfig(**{**CFG, "warmup_steps": 3}))
    total = 3 * len(loader)
    assert len(h.lr) == total == 9 and h.step == list(range(1, 10))
    expected = [3e-3 * lr_factor(s, 3, total) for s in range(total)]
    assert h.lr == pytest.approx(expected)
    assert h.lr[2] == pytest.approx(3e-3)  # end of warmup
    assert h.epoch[-1] == 3.0 and h.time == sorted(h.time)


def test_warmup_fraction():
    assert TrainConfig(warmup_fraction=0.1).num_warmup_steps(200) == 20
    assert TrainConfig(warmup_steps=500).num_warmup_steps(200) == 200


def test_clamp_logit_scale():
    model = CLIP(CLIPConfig(**TINY))
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    clamp_logit_scale(model)
    assert model.logit_scale.item() == pytest.approx(math.log(100))
    with torch.no_grad():
        model.logit_scale.fill_(-2.0)
    clamp_logit_scale(model)
    assert model.logit_scale.item() == 0.0
    model.logit_scale.requires_grad_(False)  # a fixed temperature is left alone
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    clamp_logit_scale(model)
    assert model.logit_scale.item() == 7.0
    clamp_logit_scale(nn.Linear(2, 2))  # models without a logit_scale: nothing to do


def test_fit_clamps_after_every_step():
    model, loader = make_run()
    with torch.no_grad():
        model.logit_scale.fill_(6.0)  # scale 403 > 100
    h = fit(model, loader, TrainConfig(**{**CFG, "epochs": 1}))
    assert max(h.logit_scale) <= 100 + 1e-4
    assert h.logit_scale[0] == pytest.approx(100, rel=1e-5)
    model, loader = make_run()
    h = fit(model, loader, TrainConfig(**{**CFG, "epochs": 1, "logit_scale_max": None}))
    assert h.logit_scale[0] != pytest.approx(100, rel=1e-3)


def test_default_loss_is_symmetric_cross_entropy():
    model, loader = make_run()
    batch = next(iter(loader))
    loss = clip_loss_fn(model, batch)
    out = model(batch["image"], batch["input_ids"], batch["attention_mask"])
    labels = torch.arange(len(batch["image"]))
    ref = (F.cross_entropy(out.logits_per_image, labels) + F.cross_entropy(out.logits_per_text, labels)) / 2
    torch.testing.assert_close(loss, ref)
    with pytest.raises(ValueError, match="input_ids"):
        clip_loss_fn(model, {"image": batch["image"]})


# -- determinism and exact resume ----------------------------------------------------------------

def test_same_seed_same_losses_different_seed_different():
    runs = []
    for seed in (0, 0, 1):
        model, loader = make_run(dropout=0.1)
        runs.append(fit(model, loader, TrainConfig(**CFG, seed=seed)).loss)
    assert runs[0] == runs[1]  # bit-identical
    assert runs[0] != runs[2]


class StopAt(Callback):
    def __init__(self, step, how="stop"):
        self.step, self.how = step, how

    def on_step_end(self, state):
        if state.global_step == self.step:
            if self.how == "interrupt":
                raise KeyboardInterrupt
            state.stop = True


@pytest.mark.parametrize("generator", [False, True])
@pytest.mark.parametrize("stop_step, how", [(4, "stop"), (3, "stop"), (5, "interrupt")])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, generator, stop_step, how):
    # dropout and a random augmentation in the dataset: every RNG matters
    model, loader = make_run(dropout=0.1, generator=generator)
    full = fit(model, loader, TrainConfig(**CFG))
    ckpt = tmp_path / "run.pt"
    model, loader = make_run(dropout=0.1, generator=generator)
    part = fit(model, loader, TrainConfig(**CFG), callbacks=[StopAt(stop_step, how)], checkpoint_path=ckpt)
    assert len(part.loss) == stop_step
    assert part.stopped == ("interrupted" if how == "interrupt" else "callback")
    assert load_checkpoint(ckpt)["global_step"] == stop_step
    # resume into a differently initialised model and loader state: the checkpoint restores all
    model, loader = make_run(seed=5, dropout=0.1, generator=generator)
    torch.manual_seed(99)
    resumed = fit(model, loader, TrainConfig(**CFG), checkpoint_path=ckpt, resume=True)
    assert resumed.loss == full.loss
    assert resumed.lr == full.lr and resumed.logit_scale == full.logit_scale
    assert resumed.stopped is None
    final = model.state_dict()
    model2, loader2 = make_run(dropout=0.1, generator=generator)
    fit(model2, loader2, TrainConfig(**CFG))
    for k, v in model2.state_dict().items():
        torch.testing.assert_close(final[k], v, rtol=0, atol=0)


def test_interrupt_inside_a_step_loses_nothing(tmp_path):
    model, loader = make_run(dropout=0.1)
    full = fit(model, loader, TrainConfig(**CFG))
    calls = {"n": 0}

    def flaky_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 5:  # Ctrl-C during the 5th forward pass
            raise KeyboardInterrupt
        return clip_loss_fn(model, batch)

    ckpt = tmp_path / "run.pt"
    model, loader = make_run(dropout=0.1)
    part = fit(model, loader, TrainConfig(**CFG), loss_fn=flaky_loss, checkpoint_path=ckpt)
    assert part.stopped == "interrupted" and len(part.loss) == 4
    model, loader = make_run(dropout=0.1)
    resumed = fit(model, loader, TrainConfig(**CFG), checkpoint_path=ckpt, resume=True)
    assert resumed.loss == full.loss


def test_resume_epoch_boundary_and_finished_run(tmp_path):
    ckpt = tmp_path / "run.pt"
    model, loader = make_run(dropout=0.1)
    full = fit(model, loader, TrainConfig(**CFG))
    model, loader = make_run(dropout=0.1)
    fit(model, loader, TrainConfig(**CFG), checkpoint_path=ckpt, callbacks=[StopAt(6)])  # 6 = end of epoch 2
    assert load_checkpoint(ckpt)["epoch"] == 2 and load_checkpoint(ckpt)["step_in_epoch"] == 0
    model, loader = make_run(dropout=0.1)
    assert fit(model, loader, TrainConfig(**CFG), checkpoint_path=ckpt, resume=True).loss == full.loss
    # a finished run: resume returns the history and the trained weights without training
    fresh, loader = make_run(seed=3)
    h = fit(fresh, loader, TrainConfig(**CFG), checkpoint_path=ckpt, resume=True)
    assert h.loss == full.loss
    torch.testing.assert_close(fresh.state_dict()["logit_scale"], model.state_dict()["logit_scale"])


def test_resume_with_other_config_raises(tmp_path):
    ckpt = tmp_path / "run.pt"
    model, loader = make_run()
    fit(model, loader, TrainConfig(**CFG), checkpoint_path=ckpt, callbacks=[StopAt(2)])
    with pytest.raises(ValueError, match=r"lr: 0.003 -> 0.01"):
        fit(model, loader, TrainConfig(**{**CFG, "lr": 1e-2}), checkpoint_path=ckpt, resume=True)
    fit(model, loader, TrainConfig(**{**CFG, "log_every": 3}), checkpoint_path=ckpt, resume=True)  # harmless change
    with pytest.raises(ValueError, match="checkpoint_path"):
        fit(model, loader, TrainConfig(**CFG), resume=True)


def test_resume_with_a_loader_of_another_length_raises(tmp_path):
    # the input: stop at step 5 of an epoch of 8 batches of 32, resume with batches of 128
    ckpt = tmp_path / "run.pt"
    model, loader = make_run(n=256, batch_size=32)
    assert len(loader) == 8
    fit(model, loader, TrainConfig(**CFG), checkpoint_path=ckpt, callbacks=[StopAt(5)])
    assert load_checkpoint(ckpt)["step_in_epoch"] == 5
    _, big = make_run(n=256, batch_size=128)
    assert len(big) == 2
    with pytest.raises(ValueError, match=r"8 batches per epoch, this one has 2, batch_size 32 -> 128") as e:
        fit(model, big, TrainConfig(**CFG), checkpoint_path=ckpt, resume=True)
    assert "step 5 of epoch 1" in str(e.value) and "another checkpoint_path" in str(e.value)
    # a longer loader (dataset grew), and at an epoch boundary too: the schedule would silently change
    _, longer = make_run(n=320, batch_size=32)
    with pytest.raises(ValueError, match=r"8 batches per epoch, this one has 10, dataset_len 256 -> 320"):
        fit(model, longer, TrainConfig(**CFG), checkpoint_path=ckpt, resume=True)
    # the same loader still resumes
    fit(model, loader, TrainConfig(**CFG), checkpoint_path=ckpt, resume=True)
    assert load_checkpoint(ckpt)["global_step"] == 24


def _stopped_run(tmp_path, **kw):
    ckpt = tmp_path / "run.pt"
    model, loader = make_run(**kw)
    fit(model, loader, TrainConfig(**CFG), checkpoint_path=ckpt, callbacks=[StopAt(2)])
    return ckpt, model, loader


@pytest.mark.parametrize("change, message", [
    (dict(batch_size=24, n=72), r"batch_size: 32 -> 24"),  # same 3 batches, other batch size
    (dict(shuffle=False), r"sampler: 'RandomSampler' -> 'SequentialSampler'"),
    (dict(generator=True), r"generators: 0 -> 1"),
    (dict(drop_last=True, n=100), r"drop_last: False -> True"),
])
def test_resume_with_a_loader_that_orders_data_differently_raises(tmp_path, change, message):
    ckpt, model, _ = _stopped_run(tmp_path)
    n, batch_size = change.pop("n", 96), change.pop("batch_size", 32)
    shuffle, drop_last = change.pop("shuffle", True), change.pop("drop_last", False)
    gen = torch.Generator().manual_seed(1) if change.pop("generator", False) else None
    loader = DataLoader(ToyPairs(n), batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=drop_last)
    assert len(loader) == 3  # the number of batches alone would not tell
    with pytest.raises(ValueError, match=message):
        fit(model, loader, TrainConfig(**CFG), checkpoint_path=ckpt, resume=True)


def test_resume_with_another_model_or_frozen_parameters_raises(tmp_path):
    ckpt, model, loader = _stopped_run(tmp_path)
    other = CLIP(CLIPConfig(**{**TINY, "embed_dim": 8}))
    with pytest.raises(ValueError, match=r"model's parameters differ.*size mismatch"):
        fit(other, loader, TrainConfig(**CFG), checkpoint_path=ckpt, resume=True)
    model.logit_scale.requires_grad_(False)
    with pytest.raises(ValueError, match=r"trainable parameters differ.*were trainable, now not: \['logit_scale'\]"):
        fit(model, loader, TrainConfig(**CFG), checkpoint_path=ckpt, resume=True)


def test_resume_from_a_foreign_checkpoint_raises(tmp_path):
    model, loader = make_run()
    torch.save({"model": model.state_dict()}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match=r"lacks \['optimizer'"):
        fit(model, loader, TrainConfig(**CFG), checkpoint_path=tmp_path / "weights.pt", resume=True)


def test_resume_finished_run_with_another_loader_raises(tmp_path):
    ckpt = tmp_path / "run.pt"
    model, loader = make_run()
    fit(model, loader, TrainConfig(**CFG), checkpoint_path=ckpt)
    _, other = make_run(batch_size=48)
    with pytest.raises(ValueError, match=r"3 batches per epoch, this one has 2"):
        fit(model, other, TrainConfig(**CFG), checkpoint_path=ckpt, resume=True)


def test_missing_checkpoint_with_resume_starts_fresh(tmp_path):
    model, loader = make_run()
    full = fit(model, loader, TrainConfig(**CFG))
    model, loader = make_run()
    h = fit(model, loader, TrainConfig(**CFG), checkpoint_path=tmp_path / "new.pt", resume=True)
    assert h.loss == full.loss and (tmp_path / "new.pt").exists()


# -- learning, validation, callbacks, errors ------------------------------------------------------

def test_tiny_training_run_lowers_the_loss_and_aligns_pairs():
    model, loader = make_run(n=160)
    seen = []

    def val_fn(m):
        seen.append((m.training, torch.is_grad_enabled()))
        ds = loader.dataset
        batch = [ds[i] for i in range(10)]
        image = torch.stack([b["image"] for b in batch])
        ids = torch.stack([b["input_ids"] for b in batch])
        mask = torch.stack([b["attention_mask"] for b in batch])
        out = m(image, ids, mask)
        same = torch.tensor([[b["label"] == c["label"] for c in batch] for b in batch])
        hit = same[torch.arange(10), out.logits_per_image.argmax(1)].float().mean()
        return {"i2t_top1": hit.item()}

    h = fit(model, loader, TrainConfig(epochs=12, lr=3e-3, progress=False, device="cpu"), val_fn=val_fn)
    first, last = sum(h.loss[:5]) / 5, sum(h.loss[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    assert seen == [(False, False)] * 12
    epochs, acc = h.metric("i2t_top1")
    assert epochs == [float(e) for e in range(1, 13)] and acc[-1] >= 0.9
    assert h.val[-1]["step"] == 12 * len(loader)
    with pytest.raises(KeyError, match="i2t_top1"):
        h.metric("nope")
    assert not model.training  # fit leaves the model in eval mode


def test_custom_loss_tuple_batches_and_dict_loss():
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5])
    loader = DataLoader(list(zip(x, y)), batch_size=16, shuffle=True)
    lin = nn.Linear(3, 1)

    def loss_fn(model, batch):
        xb, yb = batch
        return {"mse": F.mse_loss(model(xb).squeeze(-1), yb)}

    h = fit(lin, loader, TrainConfig(epochs=20, lr=0.05, weight_decay=0.0, progress=False, device="cpu"),
            loss_fn=loss_fn)
    assert h.loss[-1] < 0.05 * h.loss[0]
    assert all(math.isnan(s) for s in h.logit_scale)  # no logit_scale: recorded as NaN


def test_max_seconds_stops_early_and_validates(tmp_path):
    model, loader = make_run()
    h = fit(model, loader, TrainConfig(**{**CFG, "max_seconds": 1e-9}), val_fn=lambda m: {"x": 1.0},
            checkpoint_path=tmp_path / "c.pt")
    assert h.stopped == "max_seconds" and len(h.loss) == 1
    assert h.val == [{"epoch": pytest.approx(1 / 3), "step": 1, "time": h.time[0], "x": 1.0}]
    assert load_checkpoint(tmp_path / "c.pt")["global_step"] == 1


def test_bad_inputs_raise():
    model, loader = make_run()
    with pytest.raises(ValueError, match="empty"):
        fit(model, DataLoader([], batch_size=2), TrainConfig(**CFG))
    with pytest.raises(ValueError, match="length"):
        fit(model, iter([1, 2]), TrainConfig(**CFG))
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)

    def nan_loss(model, batch):
        return clip_loss_fn(model, batch) * float("nan")

    with pytest.raises(FloatingPointError, match="diverged"):
        fit(model, loader, TrainConfig(**CFG), loss_fn=nan_loss)
    with pytest.raises(ValueError, match="scalar"):
        fit(model, loader, TrainConfig(**CFG), loss_fn=lambda m, b: torch.ones(3, requires_grad=True))


def test_callbacks_and_liveplot_run():
    import matplotlib
    matplotlib.use("Agg")
    events = []

    class Recorder(Callback):
        def on_train_begin(self, s): events.append("begin")
        def on_epoch_end(self, s): events.append(f"epoch{s.epoch}")
        def on_train_end(self, s): events.append("end")

    model, loader = make_run()
    plot = LivePlot()
    h = fit(model, loader, TrainConfig(**CFG), callbacks=[Recorder(), plot], val_fn=lambda m: {"acc": 0.5})
    assert events == ["begin", "epoch1", "epoch2", "epoch3", "end"]
    fig = plot._draw(type("S", (), {"history": h, "config": TrainConfig(**CFG)})())
    assert fig.axes[0].get_title() == "training loss" and len(fig.axes[1].lines) == 1
    assert fig.axes[1].get_ylabel() == "metric value (fraction, 0 to 1)" and fig.axes[1].get_ylim() == (0, 1.02)
    h.val = [{"epoch": 1.0, "mean_rank": 3.5}]  # not a fraction: no unit claimed, no 0-1 limits
    fig = plot._draw(type("S", (), {"history": h, "config": TrainConfig(**CFG)})())
    assert fig.axes[1].get_ylabel() == "metric value" and fig.axes[1].get_ylim()[1] > 3


def test_history_round_trip():
    h = History(step=[1], epoch=[0.5], loss=[2.0], logit_scale=[14.3], lr=[1e-3], time=[0.1],
                val=[{"epoch": 1.0, "acc": 0.5}])
    assert History.from_dict(h.to_dict()) == h


def test_default_loss_is_siglip_for_a_model_with_bias():
    from mmcourse.objectives import siglip_loss

    torch.manual_seed(0)
    model = CLIP(CLIPConfig(**TINY, init_logit_bias=-10.0, init_logit_scale=math.log(10)))
    batch = next(iter(DataLoader(ToyPairs(8), batch_size=8)))
    out = model(batch["image"], batch["input_ids"], batch["attention_mask"])
    labels = 2 * torch.eye(8) - 1  # +1 on the diagonal, -1 elsewhere
    ref = -F.logsigmoid(labels * out.logits_per_image).sum() / 8
    torch.testing.assert_close(clip_loss_fn(model, batch), ref)
    torch.testing.assert_close(clip_loss_fn(model, batch),
                               siglip_loss(out.image_embeds, out.text_embeds, out.logit_scale, out.logit_bias))


def test_same_loader_object_reused_gives_the_same_run():
    model, loader = make_run(generator=True)
    first = fit(model, loader, TrainConfig(**CFG))
    model, _ = make_run()
    assert fit(model, loader, TrainConfig(**CFG)).loss == first.loss  # the loader's generator is re-seeded
    model, _ = make_run()
    assert fit(model, loader, TrainConfig(**CFG, seed=1)).loss != first.loss


def test_resume_with_another_number_of_processes_raises(tmp_path):
    from mmcourse.training import check_resumable, loader_fingerprint

    ckpt_path, model, loader = _stopped_run(tmp_path)
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["run"] == {"loader": loader_fingerprint(loader), "world_size": 1}
    ckpt["run"]["world_size"] = 2  # as if written by a 2-process torchrun
    with pytest.raises(ValueError, match=r"trained by 2 processes, this run has 1"):
        check_resumable(ckpt, TrainConfig(**CFG), {"loader": loader_fingerprint(loader), "world_size": 1})
