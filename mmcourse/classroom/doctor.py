"""Is this environment able to run the course? One line per problem, each with its fix.

    python -m mmcourse.classroom.doctor            # `make doctor`; exit code 1 when something is wrong
    python -m mmcourse.classroom.doctor --repair   # also reinstall a torch/torchvision pair that does not work together

Checks, in order: the Python version (`requires-python`), every distribution the course needs is
installed in a version it accepts (`pyproject.toml`'s dependencies, mirrored in `REQUIREMENTS`),
torchvision's own requirement on torch, and that each of them imports — torch and torchvision
*together*, with one call of a compiled torchvision operator (`torchvision.ops.nms`): a
torchvision built for another torch fails exactly there ("operator torchvision::nms does not
exist"). Run by `make lab`/`make test`/`make setup` (after installing), by lesson 00 (a visible
check) and by `make doctor`.

This module imports nothing from the course and nothing heavy at import time, so it can report
on an environment in which torch itself is broken.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata as metadata
import re
import subprocess
import sys
from dataclasses import dataclass

# Python version, and the distributions `pyproject.toml` requires: (distribution, module the lessons
# import or None for the tools that only need to be installed, minimum version).
# tests/test_doctor.py checks this table against pyproject.toml.
PYTHON_MIN = (3, 10)
REQUIREMENTS = [
    ("torch", "torch", "2.1"),
    ("torchvision", "torchvision", "0.16"),
    ("numpy", "numpy", "1.24"),
    ("matplotlib", "matplotlib", "3.7"),
    ("scikit-learn", "sklearn", "1.3"),
    ("scipy", "scipy", "1.10"),
    ("transformers", "transformers", "4.40"),
    ("tokenizers", "tokenizers", "0.15"),
    ("ipywidgets", "ipywidgets", "8.0"),
    ("tqdm", "tqdm", "4.65"),
    ("jupyterlab", None, "4.0"),
    ("nbformat", None, "5.9"),
    ("nbclient", None, "0.8"),
    ("nbconvert", None, "7.0"),
    ("ipykernel", None, "6.25"),
    ("sacrebleu", "sacrebleu", "2.0"),
    ("pycocoevalcap", "pycocoevalcap", "1.2"),
    ("safetensors", "safetensors", "0.4"),
    ("cloudpickle", "cloudpickle", "2.0"),
]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
SETUP_FIX = "re-run `make setup` (or `pip install -e .` in the course's environment)"


@dataclass
class Problem:
    """One thing wrong: what (`what`, one line) and how to fix it (`fix`, one line)."""
    what: str
    fix: str

    def __str__(self) -> str:
        return f"PROBLEM: {self.what} -> fix: {self.fix}"


def _version_tuple(version: str) -> tuple[int, ...]:
    """'2.14.1+cpu' -> (2, 14, 1); a part's leading digits only ('0.29.0rc1' -> (0, 29, 0))."""
    parts = []
    for part in version.split("+")[0].split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        parts.append(int(match.group()))
        if match.end() < len(part):  # a pre-release or dev suffix: the rest does not count
            break
    return tuple(parts)


def _one_line(err: BaseException) -> str:
    """The last non-empty line of an exception's message, with its type: what a learner can search for."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"[:300]


def _torch_pair_fix(torch_version: str | None) -> str:
    index = f" --index-url {CPU_INDEX}" if torch_version and "+cpu" in torch_version else ""
    pin = f"torch=={torch_version.split('+')[0]}" if torch_version else "torch"
    return (f"`make setup` reinstalls a matching pair; by hand: "
            f"`.venv/bin/pip uninstall -y torchvision && .venv/bin/pip install \"{pin}\" torchvision{index}`")


def diagnose(requirements=REQUIREMENTS, python=None) -> list[Problem]:
    """Every problem found, in order (empty list: the environment can run the course).

    Args:
        requirements: (distribution, module, minimum version) triples to check.
        python: the Python version as a tuple (default: the running one; for tests).

    Returns:
        A list of `Problem`s, each one line with its fix. Never raises for a broken package: an
        import that fails is a problem in the list.
    """
    problems = []
    python = tuple(python or sys.version_info[:3])
    if python[:2] < PYTHON_MIN:
        problems.append(Problem(f"Python {'.'.join(map(str, python))} is too old (the course needs "
                                f"{'.'.join(map(str, PYTHON_MIN))} or newer)",
                                "remove `.venv` and set up again with a newer Python: `rm -rf .venv && make lab PYTHON=python3.12`"))
    versions = {}
    for dist, module, minimum in requirements:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            problems.append(Problem(f"{dist} is not installed", SETUP_FIX))
            continue
        if _version_tuple(versions[dist]) < _version_tuple(minimum):
            problems.append(Problem(f"{dist} {versions[dist]} is older than the course needs ({minimum})",
                                    f"`.venv/bin/pip install -U \"{dist}>={minimum}\"`, then re-run `make setup`"))
    torch_version = versions.get("torch")
    if torch_version and "torchvision" in versions:  # torchvision's own requirement on torch
        for requirement in metadata.requires("torchvision") or []:
            name, _, spec = requirement.partition(" ")
            if name == "torch" and spec.startswith("(>=") and ";" not in requirement:
                needed = spec.strip("()")[2:]
                if _version_tuple(torch_version) < _version_tuple(needed):
                    problems.append(Problem(f"torchvision {versions['torchvision']} needs torch >= {needed}, "
                                            f"torch {torch_version} is installed", _torch_pair_fix(torch_version)))
    for dist, module, _ in requirements:
        if dist not in versions or module is None:
            continue
        try:
            importlib.import_module(module)
            if module == "torchvision":
                import torch
                import torchvision

                torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)  # a compiled operator
        except Exception as err:  # noqa: BLE001 - every failure is reported, none is fatal here
            if module in ("torch", "torchvision"):
                fix = _torch_pair_fix(torch_version)
                what = (f"torch {torch_version} and torchvision {versions.get('torchvision')} do not work together"
                        if module == "torchvision" else f"torch {torch_version} does not import")
            else:
                what, fix = f"{dist} {versions[dist]} does not import", SETUP_FIX
            problems.append(Problem(f"{what} ({_one_line(err)})", fix))
    return problems


def summary(requirements=REQUIREMENTS) -> str:
    """One line: Python and the versions of torch and torchvision."""
    found = []
    for dist in ("torch", "torchvision"):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            found.append(f"{dist} missing")
    return f"Python {'.'.join(map(str, sys.version_info[:3]))}, " + ", ".join(found)


def check_environment(quiet: bool = False) -> bool:
    """Print the problems (one line each, with the fix) or one line saying all is well; True when
    all is well. What lesson 00 calls."""
    problems = diagnose()
    for problem in problems:
        print(problem)
    if not problems and not quiet:
        print(f"environment OK: {summary()}, and the {len(REQUIREMENTS) - 2} other packages the course needs")
    return not problems


def repair(problems: list[Problem]) -> bool:
    """Reinstall torchvision (and torch, when torch itself does not import) so that the two match:
    the one repair `pip install -e .` does not do, since both are installed and satisfy the course's
    version bounds. The installed torch version and build are kept (PyTorch's CPU index for a `+cpu`
    build); pip picks the torchvision whose requirement that torch meets. Nothing else is
    reinstalled. Returns True if the reinstall succeeded."""
    broken = [p for p in problems if p.what.startswith(("torch ", "torchvision "))]
    if not broken:
        return False
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    remove = ["torchvision"] + (["torch"] if any(p.what.startswith("torch ") and "does not import" in p.what
                                                   for p in broken) else [])
    install = [f"torch=={torch_version.split('+')[0]}" if torch_version else "torch", "torchvision"]
    if torch_version and "+cpu" in torch_version:
        install += ["--index-url", CPU_INDEX]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    print(f"doctor: reinstalling {' and '.join(reversed(remove))} as a matching pair (pip install {' '.join(install)})")
    subprocess.run(pip + ["uninstall", "--yes", "--quiet"] + remove, check=False)
    return subprocess.run(pip + ["install", "--quiet"] + install, check=False).returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmcourse.classroom.doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="print nothing when all is well")
    parser.add_argument("--repair", action="store_true",
                        help="reinstall torch and torchvision as a pair when they do not work together")
    args = parser.parse_args(argv)
    problems = diagnose()
    if problems and args.repair and repair(problems):
        # a fresh interpreter: this one has the broken modules loaded
        return subprocess.run([sys.executable, "-m", "mmcourse.classroom.doctor"] + (["--quiet"] if args.quiet else []),
                              check=False).returncode
    for problem in problems:
        print(problem)
    if not problems and not args.quiet:
        print(f"doctor: environment OK ({summary()}, and the {len(REQUIREMENTS) - 2} other packages the course needs)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
