"""Lesson 02's toy temperature experiment: toy pairs, the same `ToyCLIP` trained by `fit` with fixed
and with learned temperature, and its plots (`run_temperature_experiment`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from mmcourse.models.toy import ToyCLIP, ToyConfig
from mmcourse.viz.temperature import DEFAULT_TEMPERATURES


def make_toy_data(config: ToyConfig) -> dict[str, dict[str, torch.Tensor]]:
    """Train and validation pairs plus one noise-free "prompt" per class.

    Returns:
        {"train": {"image": (N, input_dim), "text": (N, input_dim), "label": (N,)},
         "val": same with `num_val` rows, "prompts": {"text": (C, input_dim)}}.
    """
    g = torch.Generator().manual_seed(config.seed)
    centres = config.class_spread * torch.randn(config.num_classes, config.latent_dim, generator=g)  # (C, k)
    a = torch.randn(config.latent_dim, config.input_dim, generator=g) / math.sqrt(config.latent_dim)  # (k, d)
    b = torch.randn(config.latent_dim, config.input_dim, generator=g) / math.sqrt(config.latent_dim)

    def split(n: int) -> dict[str, torch.Tensor]:
        label = torch.randint(config.num_classes, (n,), generator=g)  # (n,)
        h = centres[label] + config.noise * torch.randn(n, config.latent_dim, generator=g)  # (n, k)
        image = h @ a + config.view_noise * torch.randn(n, config.input_dim, generator=g)
        text = h @ b + config.view_noise * torch.randn(n, config.input_dim, generator=g)
        return {"image": image, "text": text, "label": label}

    return {"train": split(config.num_train), "val": split(config.num_val), "prompts": {"text": centres @ b}}


def toy_loss(model: ToyCLIP, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """`loss_fn` for `mmcourse.training.loop.fit`: the CLIP loss of a batch of toy pairs."""
    from mmcourse.objectives.losses import clip_loss

    out = model(batch["image"], batch["text"])
    return clip_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"])


@torch.no_grad()
def evaluate_toy(model: ToyCLIP, data: dict[str, dict[str, torch.Tensor]], split: str = "val") -> dict[str, float]:
    """Alignment, uniformity (Wang & Isola), zero-shot accuracy against the class prompts, and
    image→text retrieval R@1 among all pairs of the split."""
    from mmcourse.objectives.losses import alignment, uniformity

    was_training = model.training
    model.eval()
    device = model.logit_scale.device
    d = {k: v.to(device) for k, v in data[split].items()}
    img, txt = model.encode_image(d["image"]), model.encode_text(d["text"])  # (N, 3) each
    prompts = model.encode_text(data["prompts"]["text"].to(device))  # (C, 3)
    zero_shot = (img @ prompts.T).argmax(dim=1) == d["label"]
    r1 = (img @ txt.T).argmax(dim=1) == torch.arange(len(img), device=device)
    model.train(was_training)
    return {"alignment": alignment(img, txt).item(),
            "uniformity": ((uniformity(img) + uniformity(txt)) / 2).item(),
            "zero_shot_top1": zero_shot.float().mean().item(),
            "image_to_text_R@1": r1.float().mean().item()}


class TensorBatches:
    """Shuffled mini-batches of dict-of-tensors data (a light DataLoader: the toy data sits in
    memory, so per-sample collation would cost more than the training step). Has a `generator`
    so that `fit` can save and restore the shuffling state."""

    def __init__(self, data: dict[str, torch.Tensor], batch_size: int, generator: torch.Generator | None = None):
        self.data, self.batch_size = data, batch_size
        self.generator = generator or torch.Generator().manual_seed(0)
        self.n = len(next(iter(data.values())))
        if self.n < batch_size:
            raise ValueError(f"batch_size {batch_size} is larger than the data ({self.n} rows)")

    def __len__(self) -> int:
        return self.n // self.batch_size  # drop the last incomplete batch: every batch has the same N

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield {k: v[idx] for k, v in self.data.items()}


@dataclass
class ToyRun:
    """One run of the experiment."""

    name: str  # "τ = 0.07" or "learned"
    temperature: float | None  # the fixed τ, or None when learned
    final_temperature: float  # 1 / exp(logit_scale) at the end
    metrics: dict[str, float]  # evaluate_toy on the validation split
    history: object  # mmcourse.training.types.History
    model: ToyCLIP = field(repr=False)


def run_temperature_experiment(temperatures: Sequence[float] = DEFAULT_TEMPERATURES, learned: bool = True,
                               config: ToyConfig | None = None) -> list[ToyRun]:
    """Train one `ToyCLIP` per fixed τ (and one with a learned τ) with `mmcourse.training.loop.fit`.

    Every run sees the same data in the same order from the same initial weights; only the
    temperature differs.

    Returns:
        One `ToyRun` per temperature, the learned one last.
    """
    from mmcourse.training.types import TrainConfig
    from mmcourse.training.loop import fit

    config = config or ToyConfig()
    data = make_toy_data(config)
    train = data["train"]
    runs = []
    for tau in list(temperatures) + ([None] if learned else []):
        torch.manual_seed(config.seed)  # same initial weights and batch order for every run
        model = ToyCLIP(config, tau)
        loader = TensorBatches(train, config.batch_size, torch.Generator().manual_seed(config.seed))
        history = fit(model, loader, TrainConfig(epochs=config.epochs, lr=config.lr, weight_decay=0.0,
                                                 seed=config.seed, device="cpu", progress=False),
                      loss_fn=toy_loss, val_fn=lambda m: evaluate_toy(m, data))
        runs.append(ToyRun(name="learned" if tau is None else f"τ = {tau:g}", temperature=tau,
                           final_temperature=float(1 / model.logit_scale.detach().exp()),
                           metrics=evaluate_toy(model, data), history=history, model=model))
    return runs


def plot_temperature_experiment(runs: Sequence[ToyRun]):
    """Three panels: alignment vs uniformity (lower-left is better), validation accuracy per
    run, and the temperature of the learned run over training."""
    import matplotlib.pyplot as plt

    fig, (ax_au, ax_acc, ax_t) = plt.subplots(1, 3, figsize=(13, 3.6))
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(runs)))
    for run, c in zip(runs, colours):
        m = run.metrics
        ax_au.scatter(m["uniformity"], m["alignment"], color=c, s=60, label=run.name,
                      marker="*" if run.temperature is None else "o")
    ax_au.set(title="alignment vs uniformity (validation)", xlabel="uniformity (log mean exp(−2‖x−y‖²); lower = more spread)",
              ylabel="alignment (mean ‖x−y‖²; lower = closer pairs)")
    ax_au.legend(fontsize=8)
    x = np.arange(len(runs))
    ax_acc.bar(x - 0.2, [100 * r.metrics["zero_shot_top1"] for r in runs], 0.4, label="zero-shot top-1")
    ax_acc.bar(x + 0.2, [100 * r.metrics["image_to_text_R@1"] for r in runs], 0.4, label="image→text R@1")
    ax_acc.set_xticks(x, labels=[r.name for r in runs])
    ax_acc.set(title="accuracy (validation)", xlabel="temperature", ylabel="accuracy (%)", ylim=(0, 100))
    ax_acc.legend(fontsize=8)
    for run, c in zip(runs, colours):
        taus = 1 / np.asarray(run.history.logit_scale)
        ax_t.plot(run.history.epoch, taus, color=c, label=run.name, lw=2 if run.temperature is None else 1)
    ax_t.set_yscale("log")
    ax_t.set(title="temperature during training", xlabel="epoch", ylabel="τ = 1 / exp(logit_scale) (log scale)")
    ax_t.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_toy_embeddings(runs: Sequence[ToyRun], config: ToyConfig | None = None, max_points: int = 300):
    """The validation image embeddings of each run on the unit sphere, as longitude/latitude
    (an equirectangular map, in degrees), coloured by class: see how spread out (uniform) they are."""
    import matplotlib.pyplot as plt

    config = config or ToyConfig()
    val = make_toy_data(config)["val"]
    fig, axes = plt.subplots(1, len(runs), figsize=(2.9 * len(runs), 2.6), sharey=True, squeeze=False)
    for ax, run in zip(axes[0], runs):
        with torch.no_grad():
            z = run.model.encode_image(val["image"][:max_points].to(run.model.logit_scale.device)).cpu()  # (n, 3)
        lon = torch.rad2deg(torch.atan2(z[:, 1], z[:, 0]))
        lat = torch.rad2deg(torch.asin(z[:, 2].clamp(-1, 1)))
        ax.scatter(lon, lat, c=val["label"][:max_points], cmap="tab10", s=6)
        ax.set(title=run.name, xlabel="longitude (degrees)", xlim=(-180, 180), ylim=(-90, 90))
    axes[0][0].set_ylabel("latitude (degrees)")
    fig.suptitle("Validation image embeddings on the sphere (colour = class)", y=1.02)
    fig.tight_layout()
    return fig
