"""scripts/install.py: the setup's installer (uv when it can be had, pip otherwise), with pip's settings passed on."""
from __future__ import annotations

import importlib.util
import json
import stat
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("mmcourse_install_script", ROOT / "scripts" / "install.py")
install = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(install)

# What `pip config list` printed on the reference machine (a torch cap, a local wheel folder set both in a file
# and in PIP_FIND_LINKS, two local indexes that do not exist there), plus an `install` section's index that
# overrides the global one, and a section that does not apply to installing.
CONFIG = """:env:.cert='/etc/ssl/certs/ca-certificates.crt'
:env:.default-timeout='180'
:env:.find-links='{wheels}'
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.constraint='{constraint}'
global.extra-index-url='file:///nonexistent/pypi/simple https://mirror.example/simple'
global.find-links='/elsewhere/wheels'
global.index-url='https://global.example/simple'
install.index-url='https://pypi.example/simple'
download.constraint='/download/only.txt'
"""


@pytest.fixture
def config(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    constraint = tmp_path / "constraints.txt"
    constraint.write_text("torch<=2.14.1\n")
    return CONFIG.format(wheels=wheels, constraint=constraint), wheels, constraint


def test_pip_settings_reads_the_keys_that_choose_versions_and_sources(config):
    text, wheels, constraint = config
    assert install.pip_settings(text) == {
        "find-links": [str(wheels)], "constraint": [str(constraint)],
        "extra-index-url": ["file:///nonexistent/pypi/simple", "https://mirror.example/simple"],
        "index-url": ["https://pypi.example/simple"]}
    assert install.pip_settings("") == {}
    assert install.pip_settings("global.timeout='60'\nnot a line\nglobal.constraint='unclosed") == {}


def test_uv_gets_pip_s_constraints_and_mirrors_but_not_missing_ones(config):
    text, wheels, constraint = config
    options = install.uv_options(install.pip_settings(text), ["-e", ".[dev]"])
    assert options == ["--index-strategy", "unsafe-best-match", "--constraint", str(constraint),
                       "--find-links", str(wheels),
                       "--extra-index-url", "https://mirror.example/simple",
                       "--index-url", "https://pypi.example/simple"]
    # an index given on the command line (CPU_ONLY's) takes the place of pip's
    cpu = install.uv_options(install.pip_settings(text), ["torch", "--index-url", "https://cpu.example"])
    assert "https://pypi.example/simple" not in cpu and cpu.count("--index-url") == 0
    # a constraint file that does not exist is left out rather than stopping uv
    constraint.unlink()
    assert "--constraint" not in install.uv_options(install.pip_settings(text), [])


def _fake_python(folder: Path, log: Path, *, uv_code: int | None, pip_uv_code: int = 1) -> str:
    """A stand-in for the venv's python (and, when uv_code is not None, its uv) that logs each call."""
    folder.mkdir(parents=True, exist_ok=True)

    def script(name: str, body: str) -> str:
        path = folder / name
        path.write_text(f"#!{sys.executable}\nimport json, sys\n"
                        f"open({str(log)!r}, 'a').write(json.dumps([{name!r}, sys.argv[1:]]) + '\\n')\n{body}")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
        return str(path)

    if uv_code is not None:
        script("uv", f"sys.exit({uv_code})")
    return script("python", "a = sys.argv[1:]\n"
                            "if a[:2] == ['-m', 'pip'] and a[2] == 'config': print(\"global.constraint='/dev/null'\")\n"
                            f"elif a[-1] == 'uv': sys.exit({pip_uv_code})\n")


def _calls(log: Path) -> list:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_uv_installs_when_it_is_there(tmp_path, monkeypatch):
    monkeypatch.delenv("MMCOURSE_INSTALLER", raising=False)
    log = tmp_path / "log"
    python = _fake_python(tmp_path / "bin", log, uv_code=0)
    assert install.main(["-e", ".[dev]"], python=python) == 0
    calls = _calls(log)
    assert [c[0] for c in calls] == ["python", "uv"]  # pip config list, then uv; pip installs nothing
    assert calls[1][1][:6] == ["pip", "install", "--quiet", "--no-cache", "--python", python]
    assert calls[1][1][-4:] == ["--constraint", "/dev/null", "-e", ".[dev]"]


def test_pip_installs_when_uv_cannot_be_had_or_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MMCOURSE_INSTALLER", raising=False)
    pip_install = ["-m", "pip", "install", *install.PIP_FLAGS]
    # uv cannot be installed: pip installs the packages
    log = tmp_path / "a.log"
    python = _fake_python(tmp_path / "a", log, uv_code=None)
    assert install.main(["-e", ".[dev]"], python=python) == 0
    assert [c[1] for c in _calls(log)] == [[*pip_install, "uv"], [*pip_install, "-e", ".[dev]"]]
    assert "uv could not be installed; installing with pip" in capsys.readouterr().err
    # uv is there but fails: pip tries the same packages
    log = tmp_path / "b.log"
    python = _fake_python(tmp_path / "b", log, uv_code=2)
    assert install.main(["-e", ".[dev]"], python=python) == 0
    assert [c[0] for c in _calls(log)] == ["python", "uv", "python"]
    assert _calls(log)[-1][1] == [*pip_install, "-e", ".[dev]"]
    assert "uv could not install these packages; trying pip" in capsys.readouterr().err
    # MMCOURSE_INSTALLER=pip: pip only, even with uv there
    monkeypatch.setenv("MMCOURSE_INSTALLER", "pip")
    log = tmp_path / "c.log"
    python = _fake_python(tmp_path / "c", log, uv_code=0)
    assert install.main(["torch"], python=python) == 0
    assert [c[1] for c in _calls(log)] == [[*pip_install, "torch"]]


def test_the_makefile_installs_through_it():
    makefile = (ROOT / "Makefile").read_text()
    assert "INSTALL  := $(BIN)/python scripts/install.py" in makefile
    assert "pip install" not in makefile
