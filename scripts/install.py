"""Install packages into the course's venv: with uv when it can be had, else with pip; the same packages either way.

Usage (the Makefile's setup):  .venv/bin/python scripts/install.py -e ".[dev,pretrained]"
                               .venv/bin/python scripts/install.py torch torchvision --index-url URL

Why: pip unpacks torch's wheels (about 5.5 GB in the venv for the CUDA build PyPI serves on Linux) one file at a
time, about 90 s on a 2-core machine; uv (a pip-compatible installer, itself installed from PyPI into the venv
in a few seconds) unpacks them in parallel, about 30 s.

uv does not read pip's configuration, so the settings that decide *which* versions are installed and *where*
they come from are read from pip (`pip config list`, which includes the PIP_* environment variables) and passed
on: constraints (a machine may cap torch at the release its other packages were built for), find-links and
index URLs (a local mirror), with pip's rule among several indexes (the best version from any of them, uv's
`unsafe-best-match`). A local mirror named in pip's configuration that does not exist is left out (pip only
warns about it). uv runs without a cache, so the wheels are not kept a second time on disk.

If uv cannot be installed, or fails, pip runs with the same arguments (one line says so); `MMCOURSE_INSTALLER=pip`
uses pip only. Standard library only: it runs before anything else is installed.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

PIP_FLAGS = ["--quiet", "--disable-pip-version-check", "--no-compile"]
# pip's configuration keys that choose versions or sources -> uv's options
SETTINGS = {"constraint": "--constraint", "find-links": "--find-links",
            "extra-index-url": "--extra-index-url", "index-url": "--index-url"}


def pip_settings(config_list: str) -> dict[str, list[str]]:
    """Parse `pip config list` output (`global.constraint='/etc/pip/c.txt'`, `:env:.find-links='/opt/wheels'`)
    into {key: [values]} for the keys in SETTINGS (a value may hold several, separated by whitespace).

    pip has already merged its files (a key of one section appears once); what is left is pip's order among
    sections: an environment variable (`:env:`) beats the `install` section, which beats `global`, and the
    winner replaces the others (they are not added together). Other sections (`download`, ...) do not apply."""
    rank = {"global": 0, "install": 1, ":env:": 2}
    best: dict[str, tuple[int, list[str]]] = {}
    for line in config_list.splitlines():
        name, sep, value = line.partition("=")
        section, _, key = name.strip().rpartition(".")
        if not sep or key not in SETTINGS or section not in rank:
            continue
        try:
            values = [v for word in shlex.split(value) for v in word.split()]
        except ValueError:
            continue
        if key not in best or rank[section] >= best[key][0]:
            best[key] = (rank[section], values)
    return {key: values for key, (_, values) in best.items()}


def _is_missing_local(location: str) -> bool:
    """A local path, or a file:// URL, that does not exist (pip ignores it with a warning; uv stops)."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return not Path(parsed.path).exists()
    if parsed.scheme in ("http", "https"):
        return False
    return not Path(location).exists()


def uv_options(settings: dict[str, list[str]], args: list[str]) -> list[str]:
    """uv's options for pip's settings: missing local mirrors dropped, an `--index-url` in `args` taking the
    place of pip's, and pip's choice among indexes (the best version anywhere)."""
    options = ["--index-strategy", "unsafe-best-match"]
    for key, flag in SETTINGS.items():
        if key == "index-url" and "--index-url" in args:
            continue
        for value in settings.get(key, []):
            if not _is_missing_local(value):
                options += [flag, value]
    return options


def ensure_uv(python: str) -> str | None:
    """The path of uv beside `python` (in the venv), installing it with pip if missing; None if that fails."""
    uv = Path(python).parent / ("uv.exe" if os.name == "nt" else "uv")
    if not uv.exists():
        done = subprocess.run([python, "-m", "pip", "install", *PIP_FLAGS, "uv"], check=False)
        if done.returncode != 0 or not uv.exists():
            return None
    return str(uv)


def main(argv: list[str] | None = None, python: str = sys.executable) -> int:
    """Install `argv` (pip install's arguments) into the venv of `python`. Returns the installer's exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    pip = [python, "-m", "pip", "install", *PIP_FLAGS, *args]
    if os.environ.get("MMCOURSE_INSTALLER", "").lower() != "pip":
        uv = ensure_uv(python)
        if uv is not None:
            listed = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True,
                                    check=False)
            options = uv_options(pip_settings(listed.stdout), args)
            done = subprocess.run([uv, "pip", "install", "--quiet", "--no-cache", "--python", python,
                                   *options, *args], check=False)
            if done.returncode == 0:
                return 0
            print("install: uv could not install these packages; trying pip", file=sys.stderr)
        else:
            print("install: uv could not be installed; installing with pip", file=sys.stderr)
    return subprocess.run(pip, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
