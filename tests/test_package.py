"""The top-level API: every exported name resolves to the object in its home module."""
from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

import mmcourse


@pytest.mark.parametrize("name", mmcourse.__all__)
def test_exported_name_is_the_home_modules_object(name):
    home = next(module for module, names in mmcourse._API.items() if name in names)
    module = importlib.import_module(f"mmcourse.{home}")
    assert getattr(mmcourse, name) is getattr(module, name)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'clip_los'"):
        mmcourse.clip_los  # noqa: B018


def test_public_functions_are_documented():
    undocumented = [n for n in mmcourse.__all__ if not inspect.getdoc(getattr(mmcourse, n))]
    assert not undocumented, undocumented


def test_import_is_lazy():
    code = "import sys, mmcourse; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
