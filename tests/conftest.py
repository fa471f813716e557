"""Shared test setup: small thread counts and one model cache per test run."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Tests (and the notebook kernels they start, which inherit the environment) run two at a
# time on two cores: one torch thread each avoids oversubscription.
os.environ.setdefault("MMCOURSE_NUM_THREADS", "1")
# Lessons 04-06 train a model once and cache it; keep that cache inside build/ so a test run
# never reads a stale model from a learner's home directory.
os.environ.setdefault("MMCOURSE_CACHE", str(ROOT / "build" / "cache"))
# OpenMP threads that spin while waiting cost up to 10x when processes share the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# ...and the pytest processes themselves: without this, torch in each worker starts one thread
# per core and two workers fight over two cores (a 1 s test was seen taking 32 s).
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["MMCOURSE_NUM_THREADS"]))


def fails_with(check, fn, *fragments):
    """Run an exercise check on a wrong answer; assert it fails and its message contains every
    fragment (the named mistake). Returns the message."""
    import pytest
    from mmcourse.classroom.checks import CheckFailed

    with pytest.raises(CheckFailed) as info:
        check(fn)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def link_shared_models(tmp_path, load, prefix: str) -> None:
    """Train or load a model in the suite's shared cache (`load()`, e.g. lesson 06's CLIP, which the
    lessons' runs share), then link its files into `tmp_path`: a recipe given `cache=tmp_path` builds
    on it there without training it a second time."""
    from mmcourse.recipes.cache import SHIPPED_WEIGHTS, cache_dir

    load()
    for path in [*cache_dir().glob(f"{prefix}_*.pt"), *SHIPPED_WEIGHTS.glob(f"{prefix}_*.pt")]:
        if not (tmp_path / path.name).exists():
            (tmp_path / path.name).symlink_to(path)
