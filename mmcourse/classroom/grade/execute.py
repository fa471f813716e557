"""Stage 2, execute: run a prepared submission, cell by cell, in a fresh (sandboxed) kernel, and
after each graded cell ask that kernel for the values the cell grades (`collect_values`).

Nothing read back from the kernel is code: cell outputs are kept for the executed notebook and
the messages, and the graded values come back as plain data (`mmcourse.classroom.grade.protocol`).
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Callable

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from mmcourse.classroom.checks.core import CHECK_MIMETYPE
from mmcourse.classroom.notebooks import kernel_start_lock
from mmcourse.classroom.grade.prepare import DEFAULT_MEMORY_MB, CellRun, GradeCell, _cell_key, _section
from mmcourse.classroom.grade.sandbox import kernel_manager_class

PROBE_TIMEOUT = 10  # seconds a kernel may take to answer after an interrupted cell (and to arm a check)
IOPUB_TIMEOUT = 10  # seconds a cell's last outputs may trail its reply (a backlog after a flood)
MAX_OUTPUT_CHARS = 100_000  # output kept per cell; a print in an endless loop makes gigabytes
_MESSAGE_CHARS = 300


def _short(text: str, limit: int = _MESSAGE_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"




class _GradingClient(NotebookClient):
    """A notebook client that keeps at most MAX_OUTPUT_CHARS of output per cell (errors and
    check results always kept), so a flood of printing cannot exhaust the grader's memory, and
    that records the kernel's reply status for each cell it ran."""

    def __init__(self, nb: nbformat.NotebookNode, **kw):
        super().__init__(nb, **kw)
        self._output_chars: dict[int, int] = {}  # cell index -> characters of output seen
        self.replies: dict[int, str] = {}  # cell index -> execute_reply status

    async def _check_raise_for_error(self, cell, cell_index, exec_reply):
        if exec_reply is not None:
            self.replies[cell_index] = str(exec_reply.get("content", {}).get("status", ""))
        return await super()._check_raise_for_error(cell, cell_index, exec_reply)

    def output(self, outs, msg, display_id, cell_index):
        content = msg.get("content", {})
        data = content.get("data") or {}
        if msg["msg_type"] == "error" or CHECK_MIMETYPE in data:
            return super().output(outs, msg, display_id, cell_index)
        size = len(content.get("text", "")) + sum(len(str(v)) for v in data.values())
        used = self._output_chars.get(cell_index, 0)
        self._output_chars[cell_index] = used + size
        if used + size <= MAX_OUTPUT_CHARS:
            return super().output(outs, msg, display_id, cell_index)
        out = None
        if used < MAX_OUTPUT_CHARS and msg["msg_type"] == "stream":  # keep the start of the flood
            head = {**content, "text": content["text"][: MAX_OUTPUT_CHARS - used]}
            out = super().output(outs, {**msg, "content": head}, display_id, cell_index)
        if used <= MAX_OUTPUT_CHARS:  # the first output over the limit: say so, once
            outs.append(nbformat.v4.new_output(
                "stream", name="stderr", text=f"\n[mmcourse.grade: output cut after {MAX_OUTPUT_CHARS} characters]\n"))
        return out


def _silent(client, code: str, timeout: float | None = None) -> str:
    """Run `code` in the kernel without output or history; the reply's status ("" if none came)."""
    client.timeout = math.ceil(timeout) if timeout else PROBE_TIMEOUT
    try:
        msg_id = client.kc.execute(code, silent=True, store_history=False)
        reply = client.wait_for_reply(msg_id)
    except (DeadKernelError, CellTimeoutError, RuntimeError):
        return ""
    return str(reply.get("content", {}).get("status", "")) if reply else ""


def execute(nb: nbformat.NotebookNode, cwd: Path, cell_timeout: float, total_timeout: float,
            env: dict[str, str] | None = None, graded: dict[str, GradeCell] | None = None,
            timeouts: dict[str, float] | None = None, memory_mb: float | None = DEFAULT_MEMORY_MB,
            inserted: set[int] | None = None, sandbox: tuple[Path, Path] | None = None,
            after_graded: Callable[[NotebookClient, str, float], None] | None = None,
            usage: Path | None = None) -> list[CellRun]:
    """Run every code cell of `nb` (in place) in a fresh kernel; never raises for what the
    notebook does. Returns what happened to each cell.

    `graded` (grade_id -> cell): after each of these cells (if the kernel still answers)
    `after_graded(client, grade_id, seconds left)` asks the kernel for the cell's values (see
    `collect_values`). `usage`: a file the kernel writes its CPU seconds to at the end. `sandbox` = (work, private) runs the kernel in the bubblewrap sandbox
    (`mmcourse.classroom.grade.sandbox`). `timeouts` (cell key -> seconds) raise the limit of a tagged cell.
    `memory_mb` limits each kernel's data memory (None: no limit). `inserted` (ids of cells
    the grader put back) are left out of the code-cell numbers messages give.

    A cell past its time limit is interrupted and the next cell runs; if the kernel does not
    come back from the interrupt, or dies, or the total time runs out, the remaining cells
    are not run and say why.
    """
    graded, timeouts = graded or {}, timeouts or {}
    runs = [CellRun() for _ in nb.cells]
    cell_timeout_s = max(1, math.ceil(cell_timeout))
    client = _GradingClient(
        nb, timeout=cell_timeout_s, kernel_name="python3", allow_errors=True, interrupt_on_timeout=True,
        error_on_timeout={"ename": "TimeoutError", "evalue": "cell timed out", "traceback": []},
        resources={"metadata": {"path": str(cwd)}}, startup_timeout=60, iopub_timeout=IOPUB_TIMEOUT,
        raise_on_iopub_timeout=True,  # a cell whose outputs did not all arrive must not look clean
        record_timing=False, shell_timeout_interval=1, shutdown_kernel="immediate",
        kernel_manager_class=kernel_manager_class(memory_mb, *(sandbox or (None, None))),
        skip_cells_with_tag="mmcourse-grader-never-skips",  # restored cells carry the solution's tags anyway
    )
    kernel_env = {**os.environ, **(env or {})}
    stop_reason = ""
    where = _Locator(nb, inserted)
    # The kernel's own stderr holds only its start-up chatter; the student's output comes via Jupyter.
    with contextlib.ExitStack() as kernel:
        with kernel_start_lock():  # one kernel start at a time: their ports can collide
            kernel.enter_context(client.setup_kernel(env=kernel_env, cwd=str(cwd), stderr=subprocess.DEVNULL))
        start = time.monotonic()  # the student's time starts when the kernel is up
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            if stop_reason:
                runs[index].reason = stop_reason
                continue
            left = total_timeout - (time.monotonic() - start)
            if left <= 0:
                stop_reason = runs[index].reason = f"not run: the notebook used up its {total_timeout:g} s time limit"
                continue
            key = _cell_key(cell)
            limit = max(cell_timeout_s, math.ceil(timeouts.get(key, 0)))
            token = ""
            client.timeout = max(1, math.ceil(min(limit, left)))
            t0 = time.monotonic()
            try:
                client.execute_cell(cell, index)
            except CellTimeoutError:
                if time.monotonic() - t0 < client.timeout - 0.05:  # replied, but its outputs never came
                    runs[index] = CellRun("incomplete", "its output did not arrive in time (after a flood of printing?)",
                                          client.replies.get(index, ""), token)
                    continue
                # else: timed out and interrupted, and the kernel did not even report idle: as below
            except DeadKernelError:
                runs[index] = CellRun("dead", "the kernel died while running it (os._exit, a crash, or out of memory)",
                                      token=token)
                stop_reason = f"not run: the kernel died in {where(index)}"
                continue
            except Exception as err:  # noqa: BLE001 - whatever goes wrong, keep the cells already run
                runs[index] = CellRun("dead", _short(f"the grader could not run it ({type(err).__name__}: {err})"),
                                      token=token)
                stop_reason = f"not run: the grader could not run {where(index)}"
                continue
            if time.monotonic() - t0 >= client.timeout - 0.05:
                runs[index] = CellRun("timeout", f"timed out after {client.timeout} s and was interrupted "
                                                 "(an infinite loop?)", client.replies.get(index, ""), token)
                if not _responsive(client):
                    stop_reason = f"not run: {where(index)} ran past its time limit and could not be interrupted"
                elif key in graded and after_graded is not None:
                    after_graded(client, key, total_timeout - (time.monotonic() - start))
                continue
            runs[index] = CellRun("ran", reply=client.replies.get(index, ""), token=token)
            if key in graded and after_graded is not None:
                after_graded(client, key, total_timeout - (time.monotonic() - start))
        if usage is not None and not stop_reason:  # the kernel's own CPU seconds, for the log (informative only)
            _silent(client, "import resource as _r; _u = _r.getrusage(_r.RUSAGE_SELF); "
                            f"open({str(usage)!r}, 'w').write(str(_u.ru_utime + _u.ru_stime)); del _r, _u")
    return runs


def collect_values(client: NotebookClient, request: Path, answer: Path, per_call: float, total: float) -> str:
    """Ask the student's kernel to answer `request` (the calls the trusted reference run recorded
    for one graded cell) into `answer`, as plain data (`protocol.serve`). Returns "" or why the
    kernel did not answer. The kernel is sent the protocol's source: it cannot import the grader."""
    from mmcourse.classroom.grade import protocol

    source = Path(protocol.__file__).read_text(encoding="utf-8")
    code = (f"exec(compile({source!r}, '<mmcourse grader>', 'exec'), _mmg := {{'__name__': 'mmcourse_grader'}}); "
            f"_mmg['serve']({str(request)!r}, {str(answer)!r}, {per_call!r}); del _mmg")
    answer.unlink(missing_ok=True)
    status = _silent(client, code, max(1.0, total))
    if status != "ok":
        return "your kernel did not answer the grader's request for this exercise's values " + (
            "in time (your function hung or the notebook's time ran out)" if status == "" else f"(it reported `{status}`)")
    return "" if answer.exists() else "your kernel did not write the values the grader asked for"


def _responsive(client) -> bool:
    """After an interrupted cell: does the kernel run a trivial cell again?"""
    client.timeout = PROBE_TIMEOUT
    try:
        msg_id = client.kc.execute("pass", store_history=False)
        return client.wait_for_reply(msg_id) is not None  # None: timed out (and interrupted again)
    except DeadKernelError:
        return False


class _Locator:
    """Names a cell so a student can find it: JupyterLab shows no numbers, so the section
    heading above it, its number among the code cells, and its first line."""

    def __init__(self, nb: nbformat.NotebookNode, inserted: set[int] | None = None):
        self.nb, self.inserted = nb, inserted or set()

    def __call__(self, index: int) -> str:
        cells = self.nb.cells
        number = sum(1 for c in cells[: index + 1] if c.cell_type == "code" and id(c) not in self.inserted)
        section = _section(cells, index)
        first = next((ln.strip() for ln in cells[index].source.split("\n") if ln.strip()), "")
        text = f"code cell {number}" + (f" under “{section}”" if section else "")
        return text + (f" (`{_short(first, 50)}`)" if first else "")


