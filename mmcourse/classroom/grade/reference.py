"""Stage 3, references and judging: the teacher's solution runs once per grading run in a trusted
kernel (never a student's, never sandboxed with one), which then judges every student.

The reference run executes the solution notebook top to bottom. It trains or loads every model
the assignment needs (so the students' kernels find them in the cache: a cold machine costs the
grader one run, not the first students their grade), times each cell (a student's copy of a
cell that is not theirs gets the solution's time, with room to spare), and records, around each
graded cell, every call the cell's checks and hidden tests make of the graded functions
(`judge_kernel`). Seeds: the run draws a secret seed; each graded cell runs under
`seed ^ crc32(cell id)` in the reference run and again when judging, so inputs drawn from the
global generators differ from run to run but match between recording and judging.

Judging one student: the same kernel puts back its namespace as it was before the graded cell,
binds the student's plain-data answers in place of the graded names, and runs the graded cell
(its hidden tests included). The course's checks then compare, diagnose and word the result as
they do for a learner, with the check results marked by a token made for that cell, which
`collect` requires. The library functions that answer an exercise (`LIBRARY_ANSWERS`, plus each
check module's `reference_<name>`) are tripped while the student's kernel computes its values.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import os
import pkgutil
import secrets
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat

from mmcourse.classroom.exercises import normalise_solution
from mmcourse.classroom.grade.execute import IOPUB_TIMEOUT, _GradingClient, _short, _silent
from mmcourse.classroom.grade.prepare import GradeCell, _cell_key
from mmcourse.classroom.notebooks import kernel_start_lock

# The library's own answers, by graded name (what the exercise's answer cell defines): a call of
# one of them while the student's kernel computes that name's values makes the call fail, and
# the row says so. Each check module's `reference_<name>` / `_reference_<name>` is added
# automatically, and so is `mmcourse.classroom.checks.core.LIBRARY_ANSWERS` (keyed by check name).
LIBRARY_ANSWERS: dict[str, tuple[str, ...]] = {
    "info_nce_formula": ("mmcourse.objectives.losses.info_nce",),
    "info_nce": ("mmcourse.objectives.losses.info_nce",),
    "clip_loss": ("mmcourse.objectives.losses.clip_loss", "mmcourse.objectives.losses.ClipLoss.forward"),
    "siglip_loss": ("mmcourse.objectives.losses.siglip_loss", "mmcourse.objectives.distributed.siglip_loss_distributed"),
    "gradient_weights": ("mmcourse.viz.temperature.similarity_gradient",),
    "attention_mask": ("mmcourse.models.clip.text_attention_mask",),
    "zero_shot_classifier": ("mmcourse.evaluation.zero_shot.build_zero_shot_classifier",),
    "recall_at_k": ("mmcourse.evaluation.retrieval.retrieval_ranks", "mmcourse.evaluation.retrieval.retrieval_metrics"),
    "caption_ranks": ("mmcourse.evaluation.retrieval.retrieval_ranks", "mmcourse.evaluation.retrieval.retrieval_metrics"),
    "rank_summary": ("mmcourse.evaluation.retrieval.retrieval_metrics",),
    "modality_gap": ("mmcourse.evaluation.analysis.modality_gap",),
    "mask_tokens": ("mmcourse.data.masking.mask_tokens",),
    "mlm_loss": ("mmcourse.objectives.losses.mlm_loss", "mmcourse.models.mlm.mlm_loss_fn"),
    "masked_accuracy": ("mmcourse.recipes.mlm.masked_accuracy_val_fn",),
    "sample_hard_negatives": ("mmcourse.objectives.itm.sample_hard_negatives",),
    "gated_fusion": ("mmcourse.models.fusion.GatedFusion.gmu",),
    "question_prior": ("mmcourse.data.vqa.question_prior_predictions",),
    "caption_loss": ("mmcourse.models.captioner.caption_loss",),
    "greedy_decode": ("mmcourse.models.decoding.greedy_search",),
    "beam_step": ("mmcourse.models.decoding.beam_search_step",),
    "local_loss_labels": ("mmcourse.objectives.distributed.local_loss_labels",),
    "grad_cache_step": ("mmcourse.training.gradcache.grad_cache_step",),
    "hf_clip_logits": ("transformers.models.clip.modeling_clip.CLIPModel.forward",),
    "sentence_embedding": ("mmcourse.models.minilm.mean_pool",),
}


def library_answers(name: str) -> tuple[str, ...]:
    """Every library function that answers the exercise defining `name` (see `LIBRARY_ANSWERS`)."""
    import mmcourse.classroom.checks as checks
    from mmcourse.classroom.checks.core import LIBRARY_ANSWERS as BY_CHECK

    found = list(LIBRARY_ANSWERS.get(name, ())) + list(BY_CHECK.get(name, ()))
    for info in pkgutil.iter_modules(checks.__path__):
        module = importlib.import_module(f"mmcourse.classroom.checks.{info.name}")
        for attr in (f"reference_{name}", f"_reference_{name}", f"_{name}"):
            if inspect.isfunction(getattr(module, attr, None)):
                found.append(f"mmcourse.classroom.checks.{info.name}.{attr}")
    return tuple(dict.fromkeys(found))


class SolutionFailed(ValueError):
    """The teacher's solution does not run cleanly: nothing can be graded against it."""


class Judge:
    """The trusted kernel: the reference run, then judging. All its work happens in one thread
    (a kernel client belongs to the thread that made it); `--jobs` students queue for it."""

    def __init__(self, solution_path: Path, cells: list[GradeCell], cell_timeout: float, timeouts: dict[str, float],
                 env: dict[str, str], seed: int | None = None, log=None):
        self.solution_path, self.cells, self.env = solution_path, cells, env
        self.cell_timeout, self.timeouts = cell_timeout, timeouts
        self.seed = secrets.randbits(31) if seed is None else seed
        self.log = log or sys.stdout
        self.folder = Path(tempfile.mkdtemp(prefix="mmcourse-judge-"))  # never inside a sandbox
        self.requests = self.folder / "requests"
        self.requests.mkdir()
        self.cell_seconds: dict[str, float] = {}  # cell key -> seconds in the reference run
        self.teacher_sources: dict[str, str] = {}  # cell key -> source of a code cell no student writes
        self.unsendable: dict[str, list[str]] = {}
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._stack = contextlib.ExitStack()
        self._client = None

    # -- the reference run
    def start(self) -> None:
        self._pool.submit(self._start).result()

    def _start(self) -> None:
        nb = normalise_solution(nbformat.read(str(self.solution_path), as_version=4))
        self._nb = nb
        client = _GradingClient(nb, timeout=60, kernel_name="python3", allow_errors=True, interrupt_on_timeout=True,
                                resources={"metadata": {"path": str(self.solution_path.parent)}}, startup_timeout=60,
                                iopub_timeout=IOPUB_TIMEOUT, record_timing=False, shutdown_kernel="immediate",
                                skip_cells_with_tag="mmcourse-grader-never-skips")
        with kernel_start_lock():  # one kernel start at a time: their ports can collide
            self._stack.enter_context(client.setup_kernel(env={**os.environ, **self.env},
                                                          cwd=str(self.solution_path.parent), stderr=subprocess.DEVNULL))
        self._client = client
        if _silent(client, "import mmcourse.classroom.grade.judge_kernel as _mmcourse_judge", 60) != "ok":
            raise SolutionFailed("the judge kernel could not import mmcourse.classroom.grade.judge_kernel")
        graded = {c.grade_id: c for c in self.cells}
        code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        self.teacher_sources = {_cell_key(c): c.source for _, c in code
                                if not c.metadata.get("nbgrader", {}).get("solution") and _cell_key(c) not in graded}
        t_start = time.monotonic()
        for n, (index, cell) in enumerate(code, start=1):
            key = _cell_key(cell)
            self._progress(n, len(code), time.monotonic() - t_start, cell)
            if key in graded:
                self._run(f"_mmcourse_judge.begin_record({key!r}, {list(graded[key].names)!r}, {self.seed})")
            client.timeout = max(600, math.ceil(self.timeouts.get(key, 0)) * 4)  # the teacher's code: time to train
            t0 = time.monotonic()
            client.execute_cell(cell, index)
            self.cell_seconds[key] = time.monotonic() - t0
            errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            if errors:
                first = next((ln for ln in cell.source.split("\n") if ln.strip()), "")
                raise SolutionFailed(f"{self.solution_path.name}: code cell {n} (`{_short(first, 60)}`) of the "
                                     f"solution fails: {errors[0].get('ename')}: {_short(errors[0].get('evalue', ''), 200)}")
            if key in graded:
                self._run(f"_mmcourse_judge.end_record({key!r})")
        print(f"\r  reference run of {self.solution_path.name}: {len(code)} cells in "
              f"{time.monotonic() - t_start:.0f} s{' ' * 30}", file=self.log)
        forbid = {name: library_answers(name) for c in self.cells for name in c.names}
        out = self._eval(f"_mmcourse_judge.dump_requests({str(self.requests)!r}, {forbid!r})")
        self.unsendable = out or {}

    def _progress(self, n: int, total: int, seconds: float, cell) -> None:
        width = 24
        done = int(width * (n - 1) / max(total, 1))
        first = next((ln.strip() for ln in cell.source.split("\n") if ln.strip()), "")
        end = "\n" if not getattr(self.log, "isatty", lambda: False)() and n == total else ""
        print(f"\r  reference run [{'#' * done}{'.' * (width - done)}] cell {n}/{total} {seconds:4.0f} s  "
              f"{_short(first, 30):<30}", end=end, file=self.log, flush=True)

    def _run(self, code: str, timeout: float = 120) -> None:
        if _silent(self._client, code, timeout) != "ok":
            raise SolutionFailed(f"the judge kernel failed on `{_short(code, 80)}`")

    def _eval(self, code: str):
        """The value of `code` in the judge kernel, read back as JSON (trusted kernel)."""
        import json

        path = self.folder / "eval.json"
        self._run(f"import json as _j; _j.dump({code}, open({str(path)!r}, 'w'))")
        return json.loads(path.read_text())

    def request(self, key: str) -> Path | None:
        path = self.requests / f"{key}.pt"
        return path if path.exists() else None

    # -- judging
    def judge(self, cell: GradeCell, answer: Path | None) -> tuple[nbformat.NotebookNode, str, str, list[str], str]:
        """Run graded `cell` for one student whose answer file is `answer` (None: none).
        Returns (the executed cell, its reply status, the token its checks carried, the library
        answers the student's code called, a problem reading the answer or "")."""
        return self._pool.submit(self._judge, cell, answer).result()

    def _judge(self, gc: GradeCell, answer: Path | None):
        import json

        client = self._client
        problem = self._eval(f"_mmcourse_judge.begin_judge({gc.grade_id!r}, {self.seed}, "
                             f"{str(answer) if answer else None!r})")
        token = secrets.token_hex(16)
        names = sorted(set(__import__("re").findall(r"\b([A-Za-z_]\w*)\b", gc.source)))
        if _silent(client, f"__import__('mmcourse.classroom.checks.core', fromlist=['_arm'])._arm({token!r}, {names!r})") != "ok":
            token = ""
        cell = nbformat.v4.new_code_cell(gc.source)
        cell.id, cell.metadata = gc.grade_id, gc.cell.metadata if gc.cell is not None else {}
        client.timeout = max(60, math.ceil(self.timeouts.get(gc.grade_id, 0)), math.ceil(self.cell_timeout))
        index = len(self._nb.cells)
        self._nb.cells.append(cell)
        try:
            client.execute_cell(cell, index)
        finally:
            self._nb.cells.pop()
        reply = client.replies.get(index, "")
        _silent(client, "__import__('mmcourse.classroom.checks.core', fromlist=['_disarm'])._disarm()")
        hits = self._eval(f"_mmcourse_judge.end_judge({gc.grade_id!r})")
        del json
        return cell, reply, token, hits, problem or ""

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._pool.submit(self._stack.close).result()
        self._pool.shutdown()
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)
