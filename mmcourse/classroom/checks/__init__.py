"""Exercise checks that explain mistakes.

`mmcourse.classroom.checks.core` is the framework; each assignment's checks live in their own module
(`infonce`, `data`, `clip`, `evaluation`, ...). Every public check is importable from here::

    from mmcourse.classroom.checks import check_info_nce

A check is found by name in the per-assignment modules on first use, so adding a module needs
no edit here, and importing `mmcourse.classroom.checks` stays cheap (no torch until a check needs it).
"""
from __future__ import annotations

import importlib
import pkgutil

from mmcourse.classroom.checks.core import (CHECK_MIMETYPE, Case, CheckFailed, CheckResult, Property, Variant,
                                            call_safely, check_value, hint, make_check, run_check)

__all__ = ["CHECK_MIMETYPE", "Case", "CheckFailed", "CheckResult", "Property", "Variant", "call_safely",
           "check_value", "hint", "make_check", "run_check"]


def _check_modules() -> list[str]:
    """Names of the per-assignment modules, in a fixed order."""
    return sorted(info.name for info in pkgutil.iter_modules(__path__)
                  if info.name != "core" and not info.name.startswith("_"))


def __getattr__(name: str):
    # Private and dunder names (IPython and pickle probe many) never trigger imports.
    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    broken: list[str] = []
    for module_name in _check_modules():
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except Exception as err:  # noqa: BLE001 - one broken module must not hide the others' checks
            broken.append(f"{module_name} ({type(err).__name__}: {err})")
            continue
        if hasattr(module, name):
            value = getattr(module, name)
            globals()[name] = value  # found once, then a plain attribute
            return value
    why = f"; these check modules failed to import: {', '.join(broken)}" if broken else ""
    raise AttributeError(f"mmcourse.classroom.checks has no check named {name!r}{why}")


def __dir__() -> list[str]:
    names = set(globals()) | set(__all__)
    for module_name in _check_modules():
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except Exception:  # noqa: BLE001
            continue
        names.update(n for n in dir(module) if n.startswith("check_"))
    return sorted(names)
