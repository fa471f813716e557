"""pytest setup for the whole repository: the lessons and solutions run under nbval
(`--nbval-lax`, see pyproject.toml) as well as the tests in tests/.

The environment below is the reference setup `make course` executes the lessons with
(`mmcourse.classroom.course.REFERENCE_ENV`): one torch thread and a model cache inside build/, so the
outputs nbval compares are the outputs committed. Kernels started by nbval inherit it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent

from mmcourse.classroom.course import REFERENCE_ENV  # noqa: E402

for _name, _value in REFERENCE_ENV.items():
    os.environ.setdefault(_name, _value)
os.environ.setdefault("MMCOURSE_CACHE", str(ROOT / "build" / "cache"))


def pytest_collection_modifyitems(config, items):
    """nbval's cells count as notebook tests: `-m "not notebook"` leaves them out."""
    for item in items:
        if type(item).__name__ == "IPyNbCell":
            item.add_marker(pytest.mark.notebook)
