"""Lesson 14's visual assistant, stage by stage (the LLaVA recipe), each stage a `Recipe`.

    model, history = load_assistant("pretrain")     # stage 0: the language model alone, on the course's text
    model, history = load_assistant("align")        # stage 1: the projector alone, on image-caption pairs
    model, history = load_assistant("instruct", negatives=False)  # stage 2: projector + LM, on conversations
    model, history = load_assistant("instruct")     # + the remedy: 1 more epoch with "is there ...? no" turns

Stage 2 is LLaVA-style data first: "is there ...?" is asked only about objects in the scene. The
remedy for the hallucination that causes (LRV-Instruction's negative instructions) continues stage 2
for `REMEDY_EPOCHS` (one) on conversations that also ask about absent objects; it is the default model.

Every stage starts from the cached model of the stage before (a hash of those weights is part of
this stage's key) and is one `train_or_load` entry. The image tower is lesson 06's two-object
Shapes CLIP (`load_shapes_clip(two_objects=True)`), frozen throughout. Scenes are `ShapesVQA` scenes
with lesson 08's held-out colour-shape combinations (`VQA_HOLDOUT`).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, replace
from typing import Any

import torch
from torch.utils.data import DataLoader

from mmcourse.training.types import History, TrainConfig

STAGES = ("pretrain", "align", "instruct")
STAGE_EPOCHS = {"pretrain": 1, "align": 2, "instruct": 6}
STAGE_LR = {"pretrain": 3e-3, "align": 1e-2, "instruct": 3e-3}
REMEDY_EPOCHS = 1
N_TRAIN = 3000
BATCH_SIZE = 64


def assistant_train_config(stage: str, remedy: bool = False, **changes) -> TrainConfig:
    """Stage 0: 1 epoch over 3,000 texts (47 steps of 64); stage 1: 2 epochs over 3,000 captioned scenes
    (94 steps, learning rate 1e-2: only the small projector trains); stage 2: 6 epochs over 3,000
    conversations (282 steps); the remedy: 1 more (47 steps)."""
    epochs = REMEDY_EPOCHS if remedy else STAGE_EPOCHS[stage]
    return replace(TrainConfig(epochs=epochs, lr=STAGE_LR[stage], weight_decay=0.01, warmup_fraction=0.05,
                               logit_scale_max=None, progress=False), **changes)


def _state_hash(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name, value in sorted(state.items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def load_assistant(stage: str = "instruct", negatives: bool = True, n_train: int = N_TRAIN, seed: int = 0,
                   batch_size: int = BATCH_SIZE, cache: str | os.PathLike | None = None,
                   force: bool = False) -> tuple[Any, History]:
    """The assistant after `stage`, from the cache or trained now (with every stage before it).

    Args:
        stage: the last stage trained: "pretrain" (text only), "align" or "instruct".
        negatives: for "instruct": with the remedy (stage 2 continued for `REMEDY_EPOCHS` (one) on conversations
            that also ask "is there ...?" about absent objects, answered "no"), or stage 2 on questions
            about present objects only. Ignored by the other stages (they read all of the scenes' text).
        n_train, seed, batch_size: the training scenes and batches.
        cache, force: the cache folder and whether to retrain this stage.

    Returns:
        (`VisualAssistant` in eval mode, the training `History` of this stage).

    Raises:
        ValueError: an unknown stage.
    """
    from mmcourse.data.conversations import (ShapesConversations, TextDataset, assistant_tokenizer, chat_collate,
                                             scene_texts)
    from mmcourse.models.assistant import (AssistantConfig, VisualAssistant, assistant_loss, caption_loss, lm_loss,
                                           set_trainable)
    from mmcourse.recipes.cache import Recipe, train_or_load
    from mmcourse.recipes.clip import load_shapes_clip
    from mmcourse.recipes.fusion import VQA_HOLDOUT

    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    tokenizer = assistant_tokenizer()
    clip = load_shapes_clip(two_objects=True, cache_dir=cache).model.cpu().eval()
    config = AssistantConfig.for_tokenizer(tokenizer, clip)
    negatives = negatives if stage == "instruct" else True
    remedy = stage == "instruct" and negatives
    previous = None
    if remedy:
        previous = load_assistant("instruct", False, n_train, seed, batch_size, cache)[0]
    elif stage != "pretrain":
        previous = load_assistant(STAGES[STAGES.index(stage) - 1], True, n_train, seed, batch_size, cache)[0]
    previous = None if previous is None else {k: v.detach().cpu().clone() for k, v in previous.state_dict().items()}

    def build():
        model = VisualAssistant(clip, config)
        if previous is not None:
            model.load_state_dict(previous)
        set_trainable(model, stage)
        return model

    kind = {"pretrain": "text", "align": "caption", "instruct": "chat"}[stage]

    def make_loader():
        data = ShapesConversations("train", n=n_train, seed=seed, holdout=VQA_HOLDOUT, negatives=negatives)
        if stage == "pretrain":
            data = TextDataset(scene_texts(data))
        return DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=chat_collate(tokenizer, kind),
                          generator=torch.Generator().manual_seed(seed))

    settings = {"config": asdict(config), "stage": stage, "clip": _state_hash(clip.state_dict()),
                "previous": None if previous is None else _state_hash(previous)}
    data_key = {"n_train": n_train, "seed": seed, "holdout": VQA_HOLDOUT, "negatives": negatives,
                "batch_size": batch_size, "texts": "caption + first turn" if stage == "pretrain" else kind}
    recipe = Recipe("assistant_remedy" if remedy else f"assistant_{stage}", build, settings,
                    assistant_train_config(stage, remedy), make_loader, data_key,
                    loss_fn={"pretrain": lm_loss, "align": caption_loss, "instruct": assistant_loss}[stage])
    model, history, _ = train_or_load(recipe, cache=cache, force=force)
    return model, history
