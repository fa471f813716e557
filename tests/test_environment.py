"""environment.yml (conda) and pyproject.toml (pip) must list the same packages and bounds."""
from __future__ import annotations

import re
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

# conda-forge names that differ from PyPI names
CONDA_TO_PYPI = {"pytorch": "torch"}
NOT_A_DEPENDENCY = {"python", "pip"}
REQ = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*(?:>=\s*([0-9][^,;\s]*))?")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirements(reqs: list[str]) -> dict[str, str | None]:
    """{normalised name: lower bound or None}"""
    out = {}
    for req in reqs:
        m = REQ.match(req)
        if not m:
            raise ValueError(f"cannot parse requirement {req!r}")
        out[_norm(m.group(1))] = m.group(2)
    return out


def pyproject_runtime(path: Path) -> dict[str, str | None]:
    data = tomllib.loads(path.read_text())
    return parse_requirements(data["project"]["dependencies"])


def conda_runtime(path: Path) -> dict[str, str | None]:
    data = yaml.safe_load(path.read_text())
    conda = [d for d in data["dependencies"] if isinstance(d, str)]
    parsed = parse_requirements(conda)
    return {_norm(CONDA_TO_PYPI.get(k, k)): v for k, v in parsed.items() if k not in NOT_A_DEPENDENCY}


def diff(pyproject: dict, conda: dict) -> list[str]:
    problems = []
    for name, bound in sorted(pyproject.items()):
        if name not in conda:
            problems.append(f"environment.yml is missing {name} (pyproject.toml has {name}>={bound})")
        elif conda[name] != bound:
            problems.append(f"environment.yml has {name}>={conda[name]} but pyproject.toml has {name}>={bound}")
    for name in sorted(set(conda) - set(pyproject)):
        problems.append(f"environment.yml lists {name}, which pyproject.toml does not")
    return problems


def test_environment_yml_matches_pyproject():
    problems = diff(pyproject_runtime(ROOT / "pyproject.toml"), conda_runtime(ROOT / "environment.yml"))
    assert not problems, "environment.yml drifted from pyproject.toml:\n" + "\n".join(problems)


def test_environment_yml_installs_the_package_with_dev_extra():
    data = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in data["dependencies"] if isinstance(d, dict))
    assert '-e ".[dev]"' in pip or "-e .[dev]" in pip
    assert "conda-forge" in data["channels"]


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace("  - numpy>=1.24\n", ""), "environment.yml is missing numpy"),
    (lambda s: s.replace("tqdm>=4.65", "tqdm>=4.0"), "environment.yml has tqdm>=4.0 but pyproject.toml has tqdm>=4.65"),
    (lambda s: s.replace("  - pip\n", "  - pip\n  - pandas>=2.0\n"), "environment.yml lists pandas"),
])
def test_drift_is_detected_and_named(tmp_path, edit, message):
    drifted = tmp_path / "environment.yml"
    drifted.write_text(edit((ROOT / "environment.yml").read_text()))
    problems = diff(pyproject_runtime(ROOT / "pyproject.toml"), conda_runtime(drifted))
    assert any(message in p for p in problems), problems


def test_torch_is_not_pinned_to_a_cuda_build():
    # the course must install on laptops; CUDA-specific pins belong to no requirement
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any("+cu" in d for d in deps)
