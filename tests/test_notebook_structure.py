"""Every committed notebook meets the course's bar for shape: objectives, one setup cell, visible
checks, summary/exercises/references. Lessons are committed executed, with up-to-date outputs
(`make course`); solutions and exercises without outputs. All small and valid."""
from __future__ import annotations

import base64
import re

import nbformat
import pytest

from conftest import ROOT
from mmcourse.classroom.course import MAX_LESSON_BYTES, WIDGET_VIEW, stale_cells

LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ASSIGNMENTS = sorted((ROOT / "solutions").glob("*.ipynb")) + sorted((ROOT / "exercises").glob("*.ipynb"))
ALL = LESSONS + ASSIGNMENTS
MAX_BYTES = 150_000  # a solution or exercise notebook (no outputs)
MAX_IMAGE_BYTES = 150_000  # one plot: a PNG at a modest resolution
MARKER = "# NBVAL_CHECK_OUTPUT"


def _id(path):
    return f"{path.parent.name}/{path.name}"


def _read(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    return nb


@pytest.mark.parametrize("path", ASSIGNMENTS, ids=_id)
def test_assignments_committed_without_outputs_and_small(path):
    nb = _read(path)
    with_outputs = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not with_outputs, f"{_id(path)}: cells {with_outputs} have outputs; clear them before committing"
    assert path.stat().st_size < MAX_BYTES, f"{_id(path)} is {path.stat().st_size} bytes"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", LESSONS, ids=_id)
def test_lesson_outputs_are_up_to_date(path):
    """Every code cell of a lesson was executed by `make course` from its current source."""
    problems = stale_cells(_read(path))
    assert not problems, f"{_id(path)}: outputs out of date; run `make course` (or " \
                         f"`python -m mmcourse.classroom.course {path.relative_to(ROOT)}`):\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("path", LESSONS, ids=_id)
def test_lesson_committed_executed_small_and_readable_without_a_kernel(path):
    nb = _read(path)
    size = path.stat().st_size
    assert size < MAX_LESSON_BYTES, f"{_id(path)} is {size:,} bytes with its outputs (limit {MAX_LESSON_BYTES:,})"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert "widgets" not in nb.metadata, f"{_id(path)}: stored widget state (run `make course`, which drops it)"
    code = [c for c in nb.cells if c.cell_type == "code"]
    for k, cell in enumerate(code):
        for out in cell.outputs:
            data = out.get("data", {})
            assert WIDGET_VIEW not in data, f"{_id(path)}: Cell {k} stores a widget view (shows as an error without a kernel)"
            assert "image/svg+xml" not in data, f"{_id(path)}: Cell {k}: plots are committed as PNG"
            if "image/png" in data:
                png = len(base64.b64decode(data["image/png"]))
                assert png < MAX_IMAGE_BYTES, f"{_id(path)}: Cell {k} has a {png:,}-byte image; lower its size or dpi"
            assert out.get("output_type") != "error", f"{_id(path)}: Cell {k} has an error output"
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs) or not any(
        "plt." in c.source or "plot_" in c.source for c in code), f"{_id(path)} plots, but no plot is committed"


@pytest.mark.parametrize("path", LESSONS, ids=_id)
def test_marked_outputs_are_printed_figures(path):
    """Cells whose output nbval compares print something, and nothing on stderr (progress bars and
    warnings vary between runs and would make the comparison flaky)."""
    code = [c for c in _read(path).cells if c.cell_type == "code"]
    for k, cell in enumerate(code):
        if MARKER in cell.source:
            streams = [o for o in cell.outputs if o.get("output_type") == "stream"]
            assert any(o.name == "stdout" for o in streams), f"{_id(path)}: marked Cell {k} prints nothing to compare"
            assert not any(o.name == "stderr" for o in streams), f"{_id(path)}: marked Cell {k} writes to stderr"


@pytest.mark.parametrize("path", LESSONS, ids=_id)
def test_measured_percentages_in_the_prose_are_printed_by_marked_cells(path):
    """A percentage with a decimal ("93.3 %") in a lesson's text is a measured figure: it must be
    printed, as written, by a cell whose output nbval compares, so it cannot silently go stale.
    Figures that need not be exact are phrased as such ("about 95 %", "more than nine in ten")."""
    cells = _read(path).cells
    printed = "".join(o.get("text", "") for c in cells if c.cell_type == "code" and MARKER in c.source
                      for o in c.outputs).replace(" %", "%")
    for i, cell in enumerate(cells):
        if cell.cell_type == "markdown":
            for figure in re.findall(r"\d+\.\d+ ?%", cell.source):
                assert figure.replace(" ", "") in printed, \
                    f"{_id(path)}: markdown cell {i} quotes {figure!r}, which no `{MARKER}` cell prints"


@pytest.mark.parametrize("path", LESSONS, ids=_id)
def test_a_widget_has_a_still_picture_above_it(path):
    """A reader without a kernel sees no widget; the code cell right above each widget cell shows
    a PNG of its default view."""
    cells = _read(path).cells
    code_cells = [c for c in cells if c.cell_type == "code"]
    for i, cell in enumerate(code_cells):
        if "widget" in cell.metadata.get("tags", []):
            above = code_cells[i - 1] if i else None
            assert above is not None and any("image/png" in o.get("data", {}) for o in above.outputs), \
                f"{_id(path)}: the widget in Cell {i} has no still picture (a cell with a PNG output) right above it"


def test_names_are_numbered_snake_case_and_stems_match():
    for path in ALL:
        assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), path.name
    lesson_stems = {p.name for p in LESSONS}
    for path in (ROOT / "solutions").glob("*.ipynb"):
        assert path.name in lesson_stems, f"solutions/{path.name} has no lesson of the same name"


@pytest.mark.parametrize("path", LESSONS, ids=_id)
def test_lesson_has_the_course_shape(path):
    nb = _read(path)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "starts with a title"
    assert re.search(r"(?i)learning objectives|in this (notebook|lesson) you will", nb.cells[0].source), \
        f"{_id(path)}: the first cell states learning objectives"
    setup = [s for s in code if "setup_notebook(" in s]
    assert len(setup) == 1, f"{_id(path)}: exactly one setup cell calls setup_notebook()"
    assert any(s.lstrip().startswith("# Check") for s in code), f"{_id(path)}: has visible '# Check' cells"
    for heading in ("## Summary", "## Exercises", "## References"):
        assert heading in markdown, f"{_id(path)}: missing '{heading}'"
    assert markdown.rfind("## Summary") > len(markdown) * 0.6, f"{_id(path)}: the summary comes at the end"
    # no pasted training loops: optimisation steps happen in mmcourse.training.loop.fit
    for s in code:
        assert not re.search(r"\.step\(\)", s) or "def " in s or "# inline once" in s, \
            f"{_id(path)}: an optimiser step outside mmcourse.training.loop.fit:\n{s[:200]}"


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("*.ipynb")), ids=_id)
def test_every_exercise_is_followed_by_a_check(path):
    nb = _read(path)
    cells = nb.cells
    for i, cell in enumerate(cells):
        if cell.cell_type == "code" and "### BEGIN SOLUTION" in cell.source:
            following = cells[i + 1: i + 4]
            assert any("check" in c.metadata.get("tags", []) for c in following), \
                f"{_id(path)}: the exercise in cell {i} has no check cell (tagged 'check') right after it"


def _recipe_loaders() -> set[str]:
    """Every public `load_*` / `train_*` function of `mmcourse.recipes`: each loads a model from the
    cache, or trains it now (read from the package, so a new recipe is covered the day it lands)."""
    import importlib
    import pkgutil

    import mmcourse.recipes as recipes

    names = set()
    for info in pkgutil.iter_modules(recipes.__path__):
        module = importlib.import_module(f"{recipes.__name__}.{info.name}")
        names |= {name for name, obj in vars(module).items() if name.startswith(("load_", "train_"))
                  and callable(obj) and getattr(obj, "__module__", "").startswith(recipes.__name__)}
    return names


TRAINED_LOADER = re.compile(r"\b(" + "|".join(sorted(_recipe_loaders())) + r")\(")
SAYS_WHERE = re.compile(r"first run|first time|has not run|trained now|trains? (it|them) (now|first)|trained in "
                        r"seconds|trained once|if you start here|ships? with the course|shipped|the course ships", re.I)


@pytest.mark.parametrize("path", LESSONS + sorted((ROOT / "solutions").glob("*.ipynb")), ids=_id)
def test_a_cell_that_loads_a_model_says_where_it_comes_from(path):
    """A cell that loads one of the course's models gets it from the cache, from the shipped weights, or
    trains it now: the learner is told which before, in the markdown above the cell or in the notebook's
    opening, or in the cell's own comment. Exercises are generated from the solutions."""
    cells = _read(path).cells
    opening = "\n".join(c.source for c in cells[:2] if c.cell_type == "markdown")
    for i, cell in enumerate(cells):
        if cell.cell_type != "code" or not TRAINED_LOADER.search(cell.source):
            continue
        above = next((c.source for c in reversed(cells[:i]) if c.cell_type == "markdown"), "")
        told = [text for text in (opening, above, cell.source) if SAYS_WHERE.search(text)]
        assert told, (f"{_id(path)}: code cell {i} (`{cell.source.splitlines()[0][:60]}`) loads a model, and nothing "
                      "before it says where from: say that it ships with the course, or which lesson trains it and "
                      "how long it takes")
