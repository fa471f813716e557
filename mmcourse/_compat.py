"""The flat module paths of mmcourse 0.1 (`mmcourse.train`, `mmcourse.pretrained`, ...), kept importable for
one release: each resolves to the module(s) that now hold its names, with a `DeprecationWarning` that
names the new place. Lessons, solutions and tests use the new paths; this is for a learner's own code.

    import mmcourse.train            # DeprecationWarning: mmcourse.train moved to mmcourse.training ...
    from mmcourse.train import fit   # the same function as mmcourse.training.fit

An old path is a module whose attributes are looked up, in order, in the new modules that replaced it
(a module that was split, like `pretrained`, lists both halves).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

MOVED: dict[str, tuple[str, ...]] = {
    "tokenizer": ("data.tokenizer",),
    "zero_shot_metadata": ("data.zero_shot_metadata",),
    "masking": ("data.masking",),
    "losses": ("objectives.losses",),
    "blockwise_loss": ("objectives.blockwise",),
    "distributed": ("objectives.distributed",),
    "itm": ("objectives.itm", "models.fusion"),
    "mlm": ("models.mlm",),
    "fusion": ("models.fusion",),
    "captioning": ("models.captioner", "recipes.captioner"),
    "decoding": ("models.decoding",),
    "hf": ("models.hf_clip", "recipes.hf_clip"),
    "pretrained_text": ("models.minilm", "recipes.locked_text"),
    "train": ("training.loop", "training.types", "training.callbacks", "training.checkpoint"),
    "checkpoint": ("training.checkpoint", "training.types"),
    "callbacks": ("training.callbacks", "training.types"),
    "gradcache": ("training.gradcache",),
    "train_ddp": ("training.ddp",),
    "memory": ("training.memory",),
    "evaluate": ("evaluation.zero_shot", "evaluation.retrieval", "evaluation.probes"),
    "analysis": ("evaluation.analysis",),
    "caption_metrics": ("evaluation.caption_metrics",),
    "plots": ("viz.plots",),
    "temperature": ("viz.temperature", "models.toy", "recipes.temperature"),
    "pretrained": ("recipes.clip", "recipes.cache"),
    "pretrained_fusion": ("recipes.fusion",),
    "mlm_pretrained": ("recipes.mlm",),
    "checks": ("classroom.checks",),
    "exercises": ("classroom.exercises",),
    "grade": ("classroom.grade",),
    "notebooks": ("classroom.notebooks",),
    "course": ("classroom.course",),
}
_PACKAGES = {"checks"}  # old packages: their submodules (mmcourse.checks.core, ...) moved with them


def _importer_stacklevel() -> int:
    """The stack level of the code that wrote the import (skipping the import system and this module)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (frame.f_code.co_filename.startswith("<frozen importlib")
                                 or frame.f_code.co_filename == __file__):
        frame, level = frame.f_back, level + 1
    return level


class _OldPathFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `mmcourse.<old>` (and `mmcourse.checks.<sub>`): first on `sys.meta_path`, so a submodule of an
    old package is never found a second time under its old name (one module object per file)."""

    def find_spec(self, fullname, path=None, target=None):
        old = _old_name(fullname)
        if old is None:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=old in _PACKAGES)

    def create_module(self, spec):
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        old = _old_name(module.__name__)
        new = _new_names(old)
        warnings.warn(f"{module.__name__} moved to {' and '.join(new)} (mmcourse 0.2); the old path works for one "
                      "more release", DeprecationWarning, stacklevel=_importer_stacklevel())
        if len(new) == 1:  # a plain move: the old name is the new module itself
            sys.modules[module.__name__] = importlib.import_module(new[0])
            return

        def __getattr__(name: str):
            for target in new:
                value = getattr(importlib.import_module(target), name, _MISSING)
                if value is not _MISSING:
                    return value
            raise AttributeError(f"module {module.__name__!r} (now {', '.join(new)}) has no attribute {name!r}")

        module.__getattr__ = __getattr__
        module.__all__ = sorted({n for t in new for n in getattr(importlib.import_module(t), "__all__", ())})


_MISSING = object()


def _old_name(fullname: str) -> str | None:
    if not fullname.startswith("mmcourse."):
        return None
    rest = fullname[len("mmcourse."):]
    head, _, tail = rest.partition(".")
    if head in MOVED and (not tail or head in _PACKAGES):
        return rest
    return None


def _new_names(old: str) -> tuple[str, ...]:
    head, _, tail = old.partition(".")
    return tuple(f"mmcourse.{n}" + (f".{tail}" if tail else "") for n in MOVED[head])


def install() -> None:
    """Put the finder first on `sys.meta_path` (once); it answers only for the old names in `MOVED`."""
    if not any(isinstance(f, _OldPathFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _OldPathFinder())
