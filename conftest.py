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


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """The staleness check of the shipped weights: the kernel nbval starts for a lesson or solution runs
    with `MMCOURSE_SHIPPED_WEIGHTS=required`, so a lesson that would train a model the course should
    ship (a recipe changed since `make weights`) fails with `ShippedWeightsMissing` instead of training
    it silently. Other tests (the grader's students, exercises with blanks) keep the learner's default."""
    if type(item).__name__ == "IPyNbCell":
        os.environ["MMCOURSE_SHIPPED_WEIGHTS"] = "required"  # before nbval's setup starts the kernel
    elif _SHIPPED_SETTING is None:
        os.environ.pop("MMCOURSE_SHIPPED_WEIGHTS", None)
    else:
        os.environ["MMCOURSE_SHIPPED_WEIGHTS"] = _SHIPPED_SETTING


_SHIPPED_SETTING = os.environ.get("MMCOURSE_SHIPPED_WEIGHTS")  # the caller's own, restored for other tests


def _one_kernel_start_at_a_time():
    """nbval starts a kernel per notebook, in each test worker: hold the course's kernel-start lock while it
    starts (two kernels starting at once can pick the same TCP port, and one dies before replying)."""
    import nbval.kernel

    from mmcourse.classroom.notebooks import kernel_start_lock

    start = nbval.kernel.start_new_kernel

    def start_new_kernel(*args, **kwargs):
        with kernel_start_lock():
            return start(*args, **kwargs)

    nbval.kernel.start_new_kernel = start_new_kernel


_one_kernel_start_at_a_time()


def pytest_collection_modifyitems(config, items):
    """nbval's cells count as notebook tests: `-m "not notebook"` leaves them out."""
    for item in items:
        if type(item).__name__ == "IPyNbCell":
            item.add_marker(pytest.mark.notebook)
