"""Executing notebooks: for the test suite, `make course` and the grader.

One function runs a notebook cell by cell in a fresh kernel and, when a cell fails, raises an
error that names the notebook, the cell number, its first line and the exception — so a red
test says where to look.

`read` is how every entry point (this runner, the exercise generator, the grader) reads a
notebook a person hands us: an nbformat 4.0–4.4 notebook (Colab, older tools: no cell ids) is
normalised the way nbformat does it, with cell ids that depend only on the cell's position and
source (so a regenerated file is identical); what cannot be read raises `NotebookFormatError`,
one line naming the file and the reason, which the command lines print before exiting with 2.

    python -m mmcourse.classroom.notebooks build notebooks build/course   # executed copies + HTML
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from mmcourse._filelock import file_lock

DEFAULT_CELL_TIMEOUT = 300  # seconds; a lesson cell takes seconds, a hang is caught


class NotebookCellError(RuntimeError):
    """A cell failed. Attributes say which one and how."""

    def __init__(self, path: str, index: int, cell: nbformat.NotebookNode, ename: str, evalue: str, detail: str = ""):
        self.path, self.index, self.cell, self.ename, self.evalue = path, index, cell, ename, evalue
        first = next((line for line in cell.source.splitlines() if line.strip()), "")
        msg = f"{path}: cell {index} (`{first[:70]}`) raised {ename}: {evalue}"
        super().__init__(msg + (f"\n{detail}" if detail else ""))


@dataclass
class ExecutionReport:
    """What an execution did: the executed notebook and seconds per cell."""

    notebook: nbformat.NotebookNode
    seconds: float
    cell_seconds: list[float]


class NotebookFormatError(ValueError):
    """A file is not a notebook we can read. `reason` is the why without the file's name."""

    def __init__(self, name: str, reason: str):
        self.name, self.reason = name, reason
        super().__init__(f"{name}: {reason}")


_CELL_ID = re.compile(r"^[a-zA-Z0-9-_]{1,64}$")  # nbformat 4.5's rule


def read(path: str | os.PathLike) -> nbformat.NotebookNode:
    """Read a notebook file as nbformat 4.5 (see `reads`).

    Raises:
        NotebookFormatError: not UTF-8 text, unreadable, empty, not JSON, or not a notebook.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise NotebookFormatError(str(path), "not a valid notebook (not UTF-8 text)") from None
    except OSError as err:
        raise NotebookFormatError(str(path), f"unreadable file ({err.strerror or type(err).__name__})") from None
    return reads(text, name=str(path))


def reads(text: str, name: str = "<notebook>") -> nbformat.NotebookNode:
    """Parse notebook JSON of any nbformat 4 minor version (older major versions are converted
    by nbformat) into a 4.5 notebook: every cell a dict with a known `cell_type`, a string
    `source`, a `metadata` dict, code cells with `outputs` and `execution_count`, and a valid,
    unique `id` (missing or broken ids are derived from the cell's position and source).

    Raises:
        NotebookFormatError: empty, not JSON, or not a notebook; the message is one line.
    """
    if not text.strip():
        raise NotebookFormatError(name, "empty file")
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. MissingIDFieldWarning: we add the ids below
            nb = nbformat.reads(text, as_version=4)
    except Exception as err:  # noqa: BLE001 - whatever nbformat says, one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        first = first if len(first) <= 120 else first[:119] + "…"
        raise NotebookFormatError(name, f"not a valid notebook ({first})") from None
    return normalise(nb, name)


def normalise(nb: nbformat.NotebookNode, name: str = "<notebook>") -> nbformat.NotebookNode:
    """Make `nb` (in place, and returned) a notebook the course's tools can rely on; see `reads`."""
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise NotebookFormatError(name, "not a valid notebook (no cells)")
    if not isinstance(nb.get("metadata"), dict):
        nb["metadata"] = nbformat.NotebookNode()
    seen: set[str] = set()
    for index, cell in enumerate(nb["cells"]):
        if not (isinstance(cell, dict) and cell.get("cell_type") in ("code", "markdown", "raw")):
            raise NotebookFormatError(name, f"not a valid notebook (cell {index} is malformed)")
        if isinstance(cell.get("source"), list) and all(isinstance(s, str) for s in cell["source"]):
            cell["source"] = "".join(cell["source"])
        if not isinstance(cell.get("source"), str):
            raise NotebookFormatError(name, f"not a valid notebook (cell {index} is malformed)")
        if not isinstance(cell.get("metadata"), dict):
            cell["metadata"] = nbformat.NotebookNode()
        if cell["cell_type"] == "code":
            if not isinstance(cell.get("outputs"), list):
                cell["outputs"] = []
            cell.setdefault("execution_count", None)
        cell_id = cell.get("id")
        if not (isinstance(cell_id, str) and _CELL_ID.match(cell_id)) or cell_id in seen:
            digest = hashlib.sha1(f"{index}\n{cell['cell_type']}\n{cell['source']}".encode()).hexdigest()
            cell_id = next(digest[i:i + 8] for i in range(0, 33) if digest[i:i + 8] not in seen)
            cell["id"] = cell_id
        seen.add(cell_id)
    nb["nbformat"], nb["nbformat_minor"] = 4, max(5, nb.get("nbformat_minor") or 0)
    return nb


KERNEL_START_LOCK = Path(tempfile.gettempdir()) / "mmcourse-kernel-start.lock"


@contextlib.contextmanager
def kernel_start_lock(path: str | os.PathLike = KERNEL_START_LOCK):
    """Hold while a kernel starts, until it answers: one kernel start at a time across processes.

    jupyter_client picks a kernel's five TCP ports by binding free ones and releasing them; a kernel
    started at the same moment by another process (a second test worker, a grader with `--jobs 2`) can
    take one of them first, and then the new kernel dies before it replies ("Kernel died before replying
    to kernel_info"; jupyter_client issue 487). A start takes a few seconds, so serialising them costs
    little. A no-op where `fcntl` does not exist (Windows).
    """
    with file_lock(path):
        yield


def execute_notebook(
    nb: str | os.PathLike | nbformat.NotebookNode,
    *,
    timeout: float = DEFAULT_CELL_TIMEOUT,
    cwd: str | os.PathLike | None = None,
    allow_errors: bool = False,
    kernel_name: str = "python3",
    env: dict[str, str] | None = None,
    name: str | None = None,
) -> ExecutionReport:
    """Run every code cell of a notebook in a fresh kernel.

    Args:
        nb: a path (read with `read`, so older nbformat 4 files work) or an in-memory notebook
            (not modified if a path; executed in place otherwise).
        timeout: seconds allowed per cell.
        cwd: working directory of the kernel (default: the notebook's folder).
        allow_errors: if False, stop at the first failing cell with `NotebookCellError`; if True,
            run every cell and leave the errors in the outputs (the grader's mode).
        kernel_name: Jupyter kernel to start.
        env: extra environment variables for the kernel.
        name: how to name the notebook in errors (default: its path).

    Returns:
        An `ExecutionReport` with the executed notebook and timings.

    Raises:
        NotebookCellError: a cell raised, timed out, or the kernel died (unless allow_errors).
        NotebookFormatError: `nb` is a path to a file that is not a readable notebook.
    """
    if isinstance(nb, (str, os.PathLike)):
        path = Path(nb)
        name = name or str(path)
        cwd = cwd or path.parent
        nb = read(path)
    name = name or "<notebook>"
    cwd = str(cwd or os.getcwd())
    client = NotebookClient(
        nb, timeout=timeout, kernel_name=kernel_name, allow_errors=allow_errors,
        resources={"metadata": {"path": cwd}},
    )
    kernel_env = {**os.environ, **(env or {})}
    cell_seconds: list[float] = []
    start = time.perf_counter()
    # The kernel's own stderr only says that it listens on localhost TCP; errors reach us
    # through the cells' outputs.
    with contextlib.ExitStack() as kernel:
        with kernel_start_lock():
            kernel.enter_context(client.setup_kernel(env=kernel_env, cwd=cwd, stderr=subprocess.DEVNULL))
        for index, cell in enumerate(nb.cells):
            t0 = time.perf_counter()
            try:
                client.execute_cell(cell, index)
            except CellTimeoutError:
                raise NotebookCellError(name, index, cell, "TimeoutError", f"cell took longer than {timeout} s") from None
            except DeadKernelError as err:
                if allow_errors:
                    cell.outputs.append(nbformat.v4.new_output("error", ename="DeadKernelError", evalue=str(err), traceback=[]))
                    break
                raise NotebookCellError(name, index, cell, "DeadKernelError", str(err)) from None
            except CellExecutionError as err:
                raise NotebookCellError(name, index, cell, err.ename, err.evalue, _short(err.traceback)) from None
            cell_seconds.append(time.perf_counter() - t0)
    return ExecutionReport(nb, time.perf_counter() - start, cell_seconds)


def _short(traceback: str, lines: int = 25) -> str:
    tail = traceback.strip().splitlines()[-lines:]
    return "\n".join(tail)


def first_error(nb: nbformat.NotebookNode) -> tuple[int, dict] | None:
    """(cell index, error output) of the first cell with an error output, or None."""
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return index, out
    return None


def build_course(src: Path, dest: Path, html: bool = True, timeout: float = DEFAULT_CELL_TIMEOUT,
                 unreadable: list[str] | None = None) -> int:
    """Execute every notebook in `src` and write executed copies (and HTML) to `dest`.

    Returns the number of notebooks that failed (a cell error, or a file that is not a
    notebook: its one-line reason is printed and, if given, appended to `unreadable`).
    """
    from nbconvert import HTMLExporter

    dest.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in sorted(src.glob("[0-9][0-9]_*.ipynb")):
        t0 = time.perf_counter()
        try:
            report = execute_notebook(path, timeout=timeout)
        except NotebookFormatError as err:
            failures += 1
            print(f"error: {err}", file=sys.stderr)
            if unreadable is not None:
                unreadable.append(str(err))
            continue
        except NotebookCellError as err:
            failures += 1
            print(f"FAILED {err}", file=sys.stderr)
            continue
        nbformat.write(report.notebook, str(dest / path.name))
        if html:
            body, _ = HTMLExporter().from_notebook_node(report.notebook)
            (dest / path.with_suffix(".html").name).write_text(body, encoding="utf-8")
        print(f"{path.name}: {time.perf_counter() - t0:5.1f} s -> {dest / path.name}")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmcourse.classroom.notebooks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="execute notebooks and write executed copies and HTML")
    b.add_argument("src", type=Path)
    b.add_argument("dest", type=Path)
    b.add_argument("--no-html", action="store_true")
    b.add_argument("--timeout", type=float, default=DEFAULT_CELL_TIMEOUT)
    args = parser.parse_args(argv)
    if not args.src.is_dir():
        print(f"error: {args.src} is not a folder", file=sys.stderr)
        return 2
    unreadable: list[str] = []
    failures = build_course(args.src, args.dest, html=not args.no_html, timeout=args.timeout, unreadable=unreadable)
    return 2 if unreadable else 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
