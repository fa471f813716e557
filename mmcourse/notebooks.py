"""Executing notebooks: for the test suite, `make course` and the grader.

One function runs a notebook cell by cell in a fresh kernel and, when a cell fails, raises an
error that names the notebook, the cell number, its first line and the exception — so a red
test says where to look.

    python -m mmcourse.notebooks build notebooks build/course   # executed copies + HTML
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

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


def read(path: str | os.PathLike) -> nbformat.NotebookNode:
    return nbformat.read(str(path), as_version=4)


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
        nb: a path or an in-memory notebook (not modified if a path; executed in place otherwise).
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
    with client.setup_kernel(env=kernel_env, cwd=cwd, stderr=subprocess.DEVNULL):
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


def build_course(src: Path, dest: Path, html: bool = True, timeout: float = DEFAULT_CELL_TIMEOUT) -> int:
    """Execute every notebook in `src` and write executed copies (and HTML) to `dest`."""
    from nbconvert import HTMLExporter

    dest.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in sorted(src.glob("[0-9][0-9]_*.ipynb")):
        t0 = time.perf_counter()
        try:
            report = execute_notebook(path, timeout=timeout)
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
    parser = argparse.ArgumentParser(prog="python -m mmcourse.notebooks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="execute notebooks and write executed copies and HTML")
    b.add_argument("src", type=Path)
    b.add_argument("dest", type=Path)
    b.add_argument("--no-html", action="store_true")
    b.add_argument("--timeout", type=float, default=DEFAULT_CELL_TIMEOUT)
    args = parser.parse_args(argv)
    failures = build_course(args.src, args.dest, html=not args.no_html, timeout=args.timeout)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
