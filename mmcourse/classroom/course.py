"""Lessons are committed executed: run them in place, stamp what was run, find stale outputs.

A lesson in `notebooks/NN_topic.ipynb` carries its outputs (plots, tables, printed figures) so it
reads complete on a code host or in JupyterLab before any kernel starts. `make course` re-executes
lessons here, on the reference setup the tests use (one torch thread, the test suite's settings),
and stamps every executed code cell with a hash of its source. A cell edited afterwards without
re-running no longer matches its stamp: `stale_cells` names it, and the test suite fails on it.

    python -m mmcourse.classroom.course                                    # every lesson, in place
    python -m mmcourse.classroom.course notebooks/04_training_clip.ipynb   # one lesson
    python -m mmcourse.classroom.course --check                            # list stale lessons (no kernel)

Trained models go to a fresh cache (`build/course-cache`, emptied first unless `--keep-cache`),
so every lesson shows what a learner sees running the course in order the first time, and the
reported times are first-run times.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]  # the repository (mmcourse/classroom/this.py)
LESSON_GLOB = "[0-9][0-9]_*.ipynb"
STAMP_KEY = "mmcourse"  # cell.metadata["mmcourse"]["source_sha256"]: hash of the source that was run
MAX_LESSON_BYTES = 1_000_000  # a committed lesson, outputs included
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
CELL_TIMEOUT = 600  # seconds; a lesson cell takes seconds to a minute
# A line a progress bar (tqdm) writes as text where it cannot draw a widget: "training:  40%|####  | 160/400 [...]",
# or the text stand-in of a widget that was never drawn ("HBox(children=(...))", "FloatProgress(value=0.0, ...)").
PROGRESS_LINE = re.compile(r"^.*\d+%\|.*\|\s*\d+/\d+.*$|^\s*(HBox|VBox|FloatProgress|IntProgress)\(.*$")


def reference_cpu_env(cpuinfo: str | os.PathLike = "/proc/cpuinfo", machine: str | None = None) -> dict[str, str]:
    """The instruction set the reference figures were computed with: AVX2, on an x86-64 CPU that has it.

    torch picks its CPU kernels by the best instruction set the CPU offers (ATen's vectorised loops
    and oneDNN's convolutions: AVX2, or AVX-512 where present). The two round differently in the
    last bits, so a model trained in a lesson ends with other weights on an AVX-512 CPU and prints
    other figures (lesson 04: 99.2% instead of 98.6%). Capping both at AVX2 gives the committed
    figures on every x86-64 Linux machine with AVX2 (all since 2013). Elsewhere (ARM, macOS, an old
    CPU without AVX2, where forcing AVX2 would crash) nothing is set: figures there may differ in
    the last digit. torch reads both variables once, at its first operation: they must be in the
    environment of the process (a kernel) before it starts.

    Args:
        cpuinfo: Linux's CPU description (`/proc/cpuinfo`); a missing file means "not Linux".
        machine: `platform.machine()` (default: this machine's), e.g. "x86_64" or "arm64".

    Returns:
        `{"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}` (torch's and oneDNN's own
        switches), or `{}`.
    """
    import platform

    if (machine or platform.machine()).lower() not in {"x86_64", "amd64"}:
        return {}
    try:
        flags = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return {}
    if not re.search(r"^flags\s*:.*\bavx2\b", flags, re.M):
        return {}
    return {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


# The reference setup: what the test suite sets (tests/conftest.py, conftest.py), so the outputs
# committed here are the outputs nbval compares.
REFERENCE_ENV = {
    "MMCOURSE_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
    "MPLBACKEND": "Agg",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # No progress bars: a bar is a widget in a notebook, so a marked cell that trains on a cold cache (as in the
    # tests) would show output that the committed run, which found the model cached or stripped the bar, does not.
    "TQDM_DISABLE": "1",
    **reference_cpu_env(),
}


def lessons(folder: str | os.PathLike = ROOT / "notebooks") -> list[Path]:
    """Every lesson notebook `NN_*.ipynb` in `folder`, in course order.

    Raises:
        FileNotFoundError: `folder` holds no lesson (a wrong folder is an error, never "nothing stale").
    """
    found = sorted(Path(folder).glob(LESSON_GLOB))
    if not found:
        raise FileNotFoundError(f"no lesson notebooks {LESSON_GLOB} in {folder}")
    return found


def source_hash(source: str) -> str:
    """A short hash of a cell's source (SHA-256, first 16 hex digits); line endings normalised."""
    return hashlib.sha256(source.replace("\r\n", "\n").encode("utf-8")).hexdigest()[:16]


def first_line(source: str) -> str:
    return next((line.strip() for line in source.splitlines() if line.strip()), "")[:70]


def stamp(nb: nbformat.NotebookNode) -> None:
    """Record in every code cell's metadata the hash of the source that produced its outputs."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.metadata[STAMP_KEY] = {"source_sha256": source_hash(cell.source)}


def stale_cells(nb: nbformat.NotebookNode) -> list[str]:
    """Code cells whose outputs do not come from their current source: never executed, no stamp,
    or edited since `make course` ran. Each entry names the cell as nbval does ("Cell N", counting
    code cells from 0) with its first line. Empty list: every output is up to date."""
    problems = []
    code_index = -1
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        code_index += 1
        where = f"Cell {code_index} (`{first_line(cell.source)}`)"
        recorded = cell.metadata.get(STAMP_KEY, {}).get("source_sha256")
        if cell.execution_count is None or recorded is None:
            problems.append(f"{where} was never executed by `make course`")
        elif recorded != source_hash(cell.source):
            problems.append(f"{where} was edited after it was run")
    return problems


def clean_outputs(nb: nbformat.NotebookNode) -> None:
    """Make an executed notebook fit to commit: no widget state or widget views (without a kernel a
    reader would see "Error displaying widget"), no progress-bar stubs (a bar's text lines, or the text
    stand-in of a progress widget), no execution timestamps (noise in every diff); consecutive printed
    text of one stream joined into one block, as nbval compares it."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        outputs = []
        for out in cell.outputs:
            if WIDGET_VIEW in out.get("data", {}):
                continue
            if out.output_type in ("display_data", "execute_result") and set(out.get("data", {})) == {"text/plain"} \
                    and PROGRESS_LINE.match(str(out.data["text/plain"]).strip()):
                continue
            if out.output_type == "stream":
                lines = re.split(r"[\r\n]", out.text)  # a text bar redraws itself after carriage returns
                if "\r" in out.text or any(PROGRESS_LINE.match(line) for line in lines):
                    out.text = "".join(line + "\n" for line in lines if line.strip() and not PROGRESS_LINE.match(line))
                if not out.text:
                    continue
                if outputs and outputs[-1].output_type == "stream" and outputs[-1].name == out.name:
                    outputs[-1].text += out.text  # one block of printed text, as nbval compares it
                    continue
            outputs.append(out)
        cell.outputs = outputs


def execute_lesson(path: str | os.PathLike, cache: str | os.PathLike | None = None,
                   timeout: float = CELL_TIMEOUT) -> tuple[float, float]:
    """Execute a lesson in a fresh kernel on the reference setup and write it back in place, with
    its outputs, cleaned and stamped.

    Args:
        path: the lesson notebook (read and overwritten).
        cache: the model cache for the kernel (`MMCOURSE_CACHE`); default: the environment's, else
            `build/cache` as in the tests.
        timeout: seconds allowed per cell.

    Returns:
        (wall-clock seconds, CPU seconds of the kernel process). On a machine shared with other work
        the CPU time is the better estimate of the wall time on a quiet one (lessons run one thread);
        None for the CPU time where the platform does not report it.

    Raises:
        mmcourse.classroom.notebooks.NotebookCellError: a cell failed (the file is left unchanged).
    """
    from mmcourse.classroom.notebooks import execute_notebook

    path = Path(path)
    env = {**REFERENCE_ENV,
           # absolute: the kernel runs in the notebook's folder, where a relative path means something else
           "MMCOURSE_CACHE": str(Path(cache or os.environ.get("MMCOURSE_CACHE") or ROOT / "build" / "cache").resolve())}
    start, cpu_start = time.perf_counter(), _children_cpu_seconds()
    report = execute_notebook(path, timeout=timeout, env=env, name=str(path))
    cpu = None if cpu_start is None else _children_cpu_seconds() - cpu_start  # the kernel has exited
    nb = report.notebook
    clean_outputs(nb)
    stamp(nb)
    tmp = path.with_name(path.name + ".tmp")
    nbformat.write(nb, str(tmp))
    os.replace(tmp, path)  # atomic: an interrupted run never leaves half a notebook
    return time.perf_counter() - start, cpu


def machine_gflops(n: int = 512, min_run_time: float = 1.0) -> float:
    """How fast this machine multiplies matrices right now: GFLOP/s of an (n, n) @ (n, n) float32 product
    on one torch thread (2 n^3 floating-point operations per product), from the median time of the
    products run in about `min_run_time` seconds (at least 3). The caller's torch thread count is restored.

    `make course` prints it before the first lesson and after the last, so first-run times measured on
    different days can be compared: a shared machine's speed can change by a factor of two from one hour
    to the next (lesson 00 measures the same rate).

    Raises:
        ValueError: `n` < 1 or `min_run_time` <= 0.
    """
    if n < 1 or not min_run_time > 0:
        raise ValueError(f"need n >= 1 and min_run_time > 0, got n={n}, min_run_time={min_run_time}")
    return 2 * n**3 / _median_product_seconds(n, min_run_time) / 1e9


def _median_product_seconds(n: int, min_run_time: float) -> float:
    import statistics

    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a @ b  # warm-up
        times: list[float] = []
        deadline = time.perf_counter() + min_run_time
        while time.perf_counter() < deadline or len(times) < 3:
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times)


def _children_cpu_seconds() -> float | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def check(paths: list[Path]) -> int:
    """Print the stale cells of each lesson; returns the number of stale lessons."""
    stale = 0
    for path in paths:
        problems = stale_cells(nbformat.read(str(path), as_version=4))
        if problems:
            stale += 1
            print(f"{path}: outputs out of date, run `make course`:\n  " + "\n  ".join(problems))
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmcourse.classroom.course", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="lessons to execute (default: every notebooks/NN_*.ipynb)")
    parser.add_argument("--check", action="store_true", help="only list lessons with stale outputs (exit 1 if any)")
    parser.add_argument("--cache", type=Path, default=ROOT / "build" / "course-cache",
                        help="model cache for the run (default: build/course-cache)")
    parser.add_argument("--keep-cache", action="store_true", help="reuse the models already in --cache")
    parser.add_argument("--html", type=Path, default=None, help="also write HTML renderings to this folder")
    parser.add_argument("--timeout", type=float, default=CELL_TIMEOUT,
                        help=f"seconds of wall-clock time allowed per cell (default {CELL_TIMEOUT}; raise it on a busy machine)")
    parser.add_argument("--cpu-exports", action="store_true",
                        help="only print shell `export` lines for the reference CPU kernels (`make lab` evaluates them; "
                             "a variable already set keeps its value)")
    args = parser.parse_args(argv)
    if args.cpu_exports:
        for name, value in reference_cpu_env().items():
            print(f"export {name}={shlex.quote(os.environ.get(name, value))}")
        return 0
    paths = args.paths or lessons()
    if args.check:
        return 1 if check(paths) else 0
    if not args.keep_cache:
        shutil.rmtree(args.cache, ignore_errors=True)
    from mmcourse.classroom.notebooks import NotebookCellError

    failures = 0
    print(f"this machine now: {machine_gflops():.0f} GFLOP/s (512x512 float32 products, one thread); "
          "first-run times compare between runs at similar speeds", flush=True)
    for number, path in enumerate(paths, 1):
        print(f"[{number}/{len(paths)}] {path}: running...", flush=True)
        before = set(args.cache.glob("*.pt"))
        try:
            seconds, cpu = execute_lesson(path, cache=args.cache, timeout=args.timeout)
        except NotebookCellError as err:
            failures += 1
            print(f"FAILED {err}", file=sys.stderr)
            continue
        size = path.stat().st_size
        trained = sorted(p.name.rsplit("_", 1)[0] for p in set(args.cache.glob("*.pt")) - before)
        print(f"[{number}/{len(paths)}] {path}: {seconds:5.1f} s" + (f" ({cpu:.1f} s of CPU)" if cpu is not None else "") + f", {size / 1000:.0f} kB" + ("  (over the 1 MB limit!)" if size > MAX_LESSON_BYTES else "")
              + (f"; trained and cached: {', '.join(trained)}" if trained else ""), flush=True)
        if args.html:
            from nbconvert import HTMLExporter

            args.html.mkdir(parents=True, exist_ok=True)
            body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(path), as_version=4))
            (args.html / path.with_suffix(".html").name).write_text(body, encoding="utf-8")
    print(f"this machine at the end: {machine_gflops():.0f} GFLOP/s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
