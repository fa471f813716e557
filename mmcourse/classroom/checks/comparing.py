"""Comparing a student's value with the reference: `compare(expected, actual)` is None when they
agree (tensors, arrays, numbers, sequences, dicts) and otherwise one sentence saying how they
differ: type, shape, dtype, NaN, or where the values differ and by how much. Never raises.
"""
from __future__ import annotations

import math
import sys
from typing import Any

from .running import _describe_type, _is_ndarray, _is_tensor, _safe_repr, _short, _torch


def compare(expected: Any, actual: Any, rtol: float = 1e-4, atol: float = 1e-5) -> str | None:
    """None if `actual` equals `expected` (tensors, arrays, numbers, sequences, dicts), else a
    sentence saying how it differs: type, shape, dtype, NaN, or values. Never raises."""
    try:
        return _compare(expected, actual, rtol, atol)
    except Exception as err:  # noqa: BLE001 - a student's object may break any operation
        return f"could not compare your result ({_describe_type(actual)}) with the expected one: {_short(err, 80)}"


def _compare(expected: Any, actual: Any, rtol: float, atol: float) -> str | None:
    if _is_tensor(expected):
        return _compare_tensor(expected, actual, rtol, atol)
    if _is_ndarray(expected):
        torch = _torch()
        if torch is not None:
            actual = actual.numpy() if _is_tensor(actual) else actual
        np = sys.modules["numpy"]
        if not _is_ndarray(actual):
            return f"expected a numpy array, got {_describe_type(actual)}"
        if actual.shape != expected.shape:
            return f"wrong shape: expected {expected.shape}, got {actual.shape}"
        if expected.dtype.kind in "fc" and not np.isfinite(actual).all() and np.isfinite(expected).all():
            return "the result contains NaN or inf"
        if not np.allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=expected.dtype.kind in "fc"):
            return f"values differ from the reference (largest difference {np.abs(actual - expected).max():.3g})"
        return None
    if isinstance(expected, bool) or expected is None or isinstance(expected, str):
        if _is_tensor(actual) and actual.numel() == 1 and isinstance(expected, bool):
            actual = bool(actual.item())
        return None if type(actual) is type(expected) and actual == expected else \
            f"expected {expected!r}, got {_safe_repr(actual)}"
    if isinstance(expected, (int, float)):
        if _is_tensor(actual) and actual.numel() == 1:
            actual = actual.item()
        np = sys.modules.get("numpy")
        if np is not None and isinstance(actual, np.generic):
            actual = actual.item()
        if isinstance(actual, bool) or not isinstance(actual, (int, float)):
            return f"expected a number, got {_describe_type(actual)}"
        if math.isnan(actual) and not math.isnan(expected):
            return "the result is NaN"
        if math.isinf(actual) and not math.isinf(expected):
            return "the result is inf (an overflow?)"
        if math.isnan(expected) and math.isnan(actual):
            return None
        if not abs(actual - expected) <= atol + rtol * abs(expected):
            return f"expected {expected:.6g}, got {actual:.6g}"
        return None
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"expected a dict, got {_describe_type(actual)}"
        missing = [k for k in expected if k not in actual]
        if missing:
            return f"missing keys: {missing}"
        for k in expected:
            why = _compare(expected[k], actual[k], rtol, atol)
            if why:
                return f"[{k!r}] {why}"
        return None
    if isinstance(expected, (list, tuple)):
        if not isinstance(actual, (list, tuple)):
            return f"expected a {type(expected).__name__} of length {len(expected)}, got {_describe_type(actual)}"
        if len(actual) != len(expected):
            return f"expected a sequence of length {len(expected)}, got length {len(actual)}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            why = _compare(e, a, rtol, atol)
            if why:
                return f"item {i}: {why}"
        return None
    return None if bool(actual == expected) else f"expected {_safe_repr(expected)}, got {_safe_repr(actual)}"


def _compare_tensor(expected: Any, actual: Any, rtol: float, atol: float) -> str | None:
    torch = _torch()
    if not _is_tensor(actual):
        if isinstance(actual, (int, float)) and not isinstance(actual, bool) and expected.numel() == 1:
            actual = torch.tensor(float(actual), dtype=torch.float64).reshape(expected.shape)
        elif _is_ndarray(actual):
            return "expected a torch.Tensor, got a numpy array (use torch functions, or torch.from_numpy)"
        else:
            return f"expected a torch.Tensor, got {_describe_type(actual)}"
    if tuple(actual.shape) != tuple(expected.shape):
        return f"wrong shape: expected {tuple(expected.shape)}, got {tuple(actual.shape)}"
    if actual.is_complex() != expected.is_complex():
        return f"wrong dtype: expected {expected.dtype}, got {actual.dtype}"
    if not expected.is_floating_point() and not expected.is_complex() and actual.is_floating_point():
        kind = "a boolean" if expected.dtype == torch.bool else "an integer"
        return f"wrong dtype: expected {kind} tensor ({expected.dtype}), got {actual.dtype}"
    if expected.dtype == torch.bool and actual.dtype != torch.bool:  # a 0/1 mask of another dtype means other things
        return f"wrong dtype: expected a boolean tensor (torch.bool), got {actual.dtype}"
    a, e = actual.detach().cpu(), expected.detach().cpu()
    a = a.to(torch.complex128) if a.is_complex() else a.to(torch.float64)
    e = e.to(torch.complex128) if e.is_complex() else e.to(torch.float64)
    if torch.isfinite(e).all():
        if torch.isnan(a).any():
            return "the result contains NaN"
        if not torch.isfinite(a).all():
            return "the result contains inf (an overflow?)"
    if not torch.allclose(a, e, rtol=rtol, atol=atol, equal_nan=True):
        if e.numel() == 1:
            return f"expected {e.item():.6g}, got {a.item():.6g}"
        diff = (a - e).abs().nan_to_num(nan=float("inf"))
        import numpy as np  # a dependency of torch's tensor printing anyway

        index = tuple(int(i) for i in np.unravel_index(int(diff.argmax()), tuple(diff.shape)))
        return (f"values differ from the reference (largest difference {diff.max().item():.3g} at index "
                f"{list(index)}: expected {e[index].item():.6g}, got {a[index].item():.6g})")
    return None
