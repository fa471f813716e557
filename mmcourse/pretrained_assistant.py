"""Train once, then cache: lesson 14's visual assistant, stage by stage (the LLaVA recipe).

    model, history = load_assistant("pretrain")     # stage 0: the language model alone, on the course's text
    model, history = load_assistant("align")        # stage 1: the projector alone, on image-caption pairs
    model, history = load_assistant("instruct", negatives=False)  # stage 2: projector + LM, on conversations
    model, history = load_assistant("instruct")     # + the remedy: 2 more epochs with "is there ...? no" turns

Stage 2 is LLaVA-style data first: "is there ...?" is asked only about objects in the scene. The
remedy for the hallucination that causes (LRV-Instruction's negative instructions) continues stage 2
for `REMEDY_EPOCHS` on conversations that also ask about absent objects; it is the default model.

Every stage starts from the cached model of the stage before (its cache file's name, a hash of all
that made it, is part of this stage's key) and is one `train_or_load_model` entry. The image tower is
lesson 06's two-object Shapes CLIP (`load_shapes_clip(two_objects=True)`), frozen throughout.
Scenes are `ShapesVQA` scenes with lesson 08's held-out colour-shape combinations (`VQA_HOLDOUT`).
"""
from __future__ import annotations

import os
from dataclasses import asdict, replace

import torch
from torch.utils.data import DataLoader

STAGE_EPOCHS = {"pretrain": 1, "align": 2, "instruct": 6}
STAGE_LR = {"pretrain": 3e-3, "align": 1e-2, "instruct": 3e-3}
REMEDY_EPOCHS = 2
N_TRAIN = 3000
BATCH_SIZE = 64


def assistant_train_config(stage: str, remedy: bool = False, **changes):
    """Stage 0: 1 epoch over 9,000 texts (141 steps of 64); stage 1: 2 epochs over 3,000 captioned scenes
    (94 steps); stage 2: 6 epochs over 3,000 conversations (282 steps); the remedy 2 more (94 steps)."""
    from .train import TrainConfig

    epochs = REMEDY_EPOCHS if remedy else STAGE_EPOCHS[stage]
    return replace(TrainConfig(epochs=epochs, lr=STAGE_LR[stage], weight_decay=0.01,
                               warmup_fraction=0.05, logit_scale_max=None, progress=False), **changes)


def load_assistant(stage: str = "instruct", negatives: bool = True, n_train: int = N_TRAIN, seed: int = 0,
                   batch_size: int = BATCH_SIZE, cache: str | os.PathLike | None = None, force: bool = False):
    """The assistant after `stage` ("pretrain", "align" or "instruct"), from the cache or trained now.

    Args:
        stage: the last stage trained.
        negatives: for "instruct": with the remedy (stage 2 continued on conversations that also ask
            "is there ...?" about absent objects, answered "no"), or stage 2 on questions about present
            objects only.
        n_train, seed, batch_size: the training scenes and batches.
        cache, force: the cache folder and whether to retrain.

    Returns:
        (VisualAssistant in eval mode, its training history for this stage).
    """
    from .data.conversations import ShapesConversations, TextDataset, assistant_tokenizer, chat_collate, scene_texts
    from .assistant import (AssistantConfig, VisualAssistant, assistant_loss, caption_loss, lm_loss,
                                           set_trainable)
    from .pretrained import load_shapes_clip, train_or_load_model
    from .pretrained_fusion import VQA_HOLDOUT

    if stage not in STAGE_EPOCHS:
        raise ValueError(f"stage must be one of {tuple(STAGE_EPOCHS)}, got {stage!r}")
    tokenizer = assistant_tokenizer()
    clip = load_shapes_clip(two_objects=True).model.cpu().eval()
    config = AssistantConfig.for_tokenizer(tokenizer, clip)
    previous = None
    negatives = negatives if stage == "instruct" else True  # stages 0 and 1 read all the scenes' text
    remedy = stage == "instruct" and negatives
    if stage != "pretrain":
        prev_model, _ = (load_assistant("instruct", False, n_train, seed, batch_size, cache) if remedy else
                         load_assistant({"align": "pretrain", "instruct": "align"}[stage], True, n_train, seed,
                                        batch_size, cache))
        previous = {k: v.clone() for k, v in prev_model.state_dict().items()}
    train = lambda: ShapesConversations("train", n=n_train, seed=seed, holdout=VQA_HOLDOUT, negatives=negatives)  # noqa

    def build():
        model = VisualAssistant(clip, config)
        if previous is not None:
            model.load_state_dict(previous)
        set_trainable(model, stage)
        return model

    kind = {"pretrain": "text", "align": "caption", "instruct": "chat"}[stage]
    loss_fn = {"pretrain": lm_loss, "align": caption_loss, "instruct": assistant_loss}[stage]

    def make_loader():
        data = train()
        if stage == "pretrain":
            data = TextDataset(scene_texts(data))
        return DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=chat_collate(tokenizer, kind),
                          generator=torch.Generator().manual_seed(seed))

    from .captioning import _weights_hash
    key = {"config": asdict(config), "stage": stage, "clip": _weights_hash(clip),
           "previous": None if previous is None else _state_hash(previous)}
    data_key = {"n_train": n_train, "seed": seed, "holdout": VQA_HOLDOUT, "negatives": negatives,
                "batch_size": batch_size}
    name = "assistant_remedy" if remedy else f"assistant_{stage}"
    model, history, _ = train_or_load_model(name, build, key, assistant_train_config(stage, remedy),
                                            make_loader, data_key, loss_fn=loss_fn, cache=cache, force=force)
    return model, history


def _state_hash(state) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, value in sorted(state.items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]
