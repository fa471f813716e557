"""Lazy re-exports for a package's `__init__`: `from mmcourse.training import fit` imports only the module
that defines `fit`, on first use.

    __all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), {"loop": ["fit", ...], ...})
"""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, namespace: dict[str, Any], api: dict[str, list[str]]
                 ) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """The `__all__`, module `__getattr__` (PEP 562) and `__dir__` of `package`, whose public names are
    `api` = {submodule (relative, may be dotted): [names it defines]}. A name is imported on first access
    and then stored in `namespace` (the package's globals), so later look-ups skip `__getattr__`.

    Raises (from `__getattr__`): AttributeError naming the package for a name not in `api`.
    """
    where = {name: module for module, names in api.items() for name in names}
    public = sorted(where)

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(public))

    return public, __getattr__, __dir__
