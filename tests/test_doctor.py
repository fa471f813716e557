"""`make doctor` (mmcourse.classroom.doctor): one line per problem, with its fix; a broken torch/torchvision pair named."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmcourse.classroom import doctor

ROOT = Path(__file__).resolve().parent.parent
NMS_ERROR = "operator torchvision::nms does not exist"


def _pyproject_dependencies() -> dict[str, str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    return {m.group(1).lower(): m.group(2) for m in (re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", d) for d in deps)}


def test_requirements_are_pyprojects():
    assert {dist: minimum for dist, _, minimum in doctor.REQUIREMENTS} == _pyproject_dependencies()
    requires = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'requires-python = ">={doctor.PYTHON_MIN[0]}.{doctor.PYTHON_MIN[1]}"' in requires


def test_healthy_environment_has_no_problem(capsys):
    assert doctor.diagnose() == []
    assert doctor.check_environment() is True
    out = capsys.readouterr().out
    assert out.startswith("environment OK: Python ") and "torch " in out and "torchvision " in out


def test_broken_torchvision_is_one_line_with_its_fix(tmp_path):
    """A torchvision built for another torch raises at import; a fake package reproduces that message."""
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text(f"raise RuntimeError({NMS_ERROR!r})\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    run = subprocess.run([sys.executable, "-m", "mmcourse.classroom.doctor"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 1, run
    lines = run.stdout.splitlines()
    assert len(lines) == 1, run.stdout  # one problem, one line, no traceback
    assert lines[0].startswith("PROBLEM: torch ") and "and torchvision " in lines[0], lines[0]
    assert "do not work together" in lines[0] and NMS_ERROR in lines[0], lines[0]
    assert "-> fix: `make setup` reinstalls a matching pair" in lines[0] and "pip uninstall -y torchvision" in lines[0]
    assert "Traceback" not in run.stdout + run.stderr


def test_torchvision_needing_a_newer_torch_is_named(monkeypatch):
    real_version, real_requires = doctor.metadata.version, doctor.metadata.requires
    monkeypatch.setattr(doctor.metadata, "version", lambda d: "2.13.0+cpu" if d == "torch" else real_version(d))
    monkeypatch.setattr(doctor.metadata, "requires",
                        lambda d: ["numpy", "torch (>=2.14.0)"] if d == "torchvision" else real_requires(d))
    problems = doctor.diagnose([("torch", None, "2.1"), ("torchvision", None, "0.16")])
    assert len(problems) == 1, problems
    assert "needs torch >= 2.14.0, torch 2.13.0+cpu is installed" in problems[0].what
    assert '"torch==2.13.0" torchvision --index-url https://download.pytorch.org/whl/cpu' in problems[0].fix


@pytest.mark.parametrize("requirement, expected", [
    (("no-such-distribution-xyz", "no_such_module_xyz", "1.0"), "no-such-distribution-xyz is not installed"),
    (("numpy", "numpy", "999.0"), "is older than the course needs (999.0)"),
])
def test_missing_or_old_distribution(requirement, expected):
    problems = doctor.diagnose([requirement])
    assert len(problems) == 1 and expected in problems[0].what, problems
    assert str(problems[0]).startswith("PROBLEM: ") and " -> fix: " in str(problems[0])


def test_module_that_fails_to_import_is_named(tmp_path, monkeypatch):
    (tmp_path / "tqdm").mkdir()
    (tmp_path / "tqdm" / "__init__.py").write_text("raise ImportError('libsomething.so: cannot open')\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tqdm", raising=False)
    problems = doctor.diagnose([("tqdm", "tqdm", "4.0")])
    assert len(problems) == 1 and problems[0].what.startswith("tqdm ") and "does not import" in problems[0].what
    assert "ImportError: libsomething.so: cannot open" in problems[0].what


def test_old_python_is_named():
    problems = doctor.diagnose([], python=(3, 9, 18))
    assert len(problems) == 1 and "Python 3.9.18 is too old" in problems[0].what, problems


@pytest.mark.parametrize("text, expected", [("2.14.1+cpu", (2, 14, 1)), ("0.29.0rc1", (0, 29, 0)), ("4.40", (4, 40)),
                                            ("1.26.4", (1, 26, 4))])
def test_version_tuple(text, expected):
    assert doctor._version_tuple(text) == expected


def test_makefile_stamps_only_after_a_doctor_pass_and_help_lists_the_variables():
    """Re-running setup repairs: a stamp is written after the doctor passes, and `setup` re-installs when it fails."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for stamp in ("$(VENV)/.runtime:", "$(VENV)/.dev:"):
        recipe = makefile.split(stamp, 1)[1].split("\n\n", 1)[0]
        assert recipe.index("$(DOCTOR) --repair") < recipe.index("touch $@"), recipe
    for target in ("setup:", "setup-dev:"):
        recipe = makefile.split(f"\n{target}", 1)[1].split("\n\n", 1)[0]
        assert "$(DOCTOR) ||" in recipe and "rm -f $(VENV)/.runtime $(VENV)/.dev" in recipe, recipe
    assert "\nlab: setup " in makefile and "\ntest: setup-dev " in makefile and "\ncourse: setup " in makefile
    assert "DOCTOR   := $(BIN)/python -m mmcourse.classroom.doctor" in makefile
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    run = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    for text in ("doctor\t", "LESSONS=", "CPU_ONLY=1", "PORT=", "JOBS="):
        assert text in run.stdout, (text, run.stdout)
