"""Exercise checks that explain mistakes.

`mmcourse.checks.core` is the framework; each assignment's checks live in their own module
(`infonce`, `clip`, `evaluation`, ...). Every public check is importable from here::

    from mmcourse.checks import check_info_nce
"""
from __future__ import annotations

import importlib
import pkgutil

from .core import Case, CheckFailed, CheckResult, Property, Variant, check_value, run_check

__all__ = ["Case", "CheckFailed", "CheckResult", "Property", "Variant", "check_value", "run_check"]


def __getattr__(name: str):
    # Look the name up in the per-assignment modules, so adding a module needs no edit here.
    for info in pkgutil.iter_modules(__path__):
        if info.name == "core":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"mmcourse.checks has no check named {name!r}")
