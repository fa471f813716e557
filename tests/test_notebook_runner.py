"""mmcourse.classroom.notebooks: a failing cell names the notebook and the cell; `make course` builds."""
from __future__ import annotations

import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from mmcourse.classroom.notebooks import (NotebookCellError, NotebookFormatError, build_course, execute_notebook,
                                          first_error, main, read)


def _write(path, *sources):
    nb = new_notebook(cells=[new_markdown_cell("# t")] + [new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def test_a_broken_cell_names_notebook_cell_and_error(tmp_path):
    path = _write(tmp_path / "01_broken.ipynb", "x = 1", "y = x +  # a broken solution cell\nprint(y)", "z = 3")
    with pytest.raises(NotebookCellError) as info:
        execute_notebook(path, timeout=60)
    err = info.value
    assert err.index == 2 and err.ename == "SyntaxError"
    assert "01_broken.ipynb: cell 2 (`y = x +  # a broken solution cell`) raised SyntaxError" in str(err)


def test_runs_in_the_notebook_folder_and_keeps_outputs(tmp_path):
    (tmp_path / "data.txt").write_text("hello")
    path = _write(tmp_path / "nb.ipynb", "print(open('data.txt').read())")
    report = execute_notebook(path, timeout=60)
    assert report.notebook.cells[1].outputs[0]["text"] == "hello\n"
    assert len(report.cell_seconds) == 2 and report.seconds >= sum(report.cell_seconds) * 0.99


def test_a_hanging_cell_times_out(tmp_path):
    path = _write(tmp_path / "hang.ipynb", "import time\ntime.sleep(30)")
    with pytest.raises(NotebookCellError, match=r"hang\.ipynb: cell 1 .* TimeoutError: cell took longer than 2 s"):
        execute_notebook(path, timeout=2)


def test_allow_errors_runs_every_cell(tmp_path):
    path = _write(tmp_path / "e.ipynb", "1/0", "print('after')")
    nb = execute_notebook(path, timeout=60, allow_errors=True).notebook
    index, out = first_error(nb)
    assert index == 1 and out["ename"] == "ZeroDivisionError"
    assert nb.cells[2].outputs[0]["text"] == "after\n"
    assert first_error(new_notebook(cells=[new_code_cell("x")])) is None


def test_build_course_writes_executed_copies_and_html(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    _write(src / "01_ok.ipynb", "print(6 * 7)")
    _write(src / "02_bad.ipynb", "raise RuntimeError('boom')")
    failures = build_course(src, tmp_path / "out", timeout=60)
    assert failures == 1
    executed = nbformat.read(str(tmp_path / "out" / "01_ok.ipynb"), as_version=4)
    assert executed.cells[1].outputs[0]["text"] == "42\n"
    assert "42" in (tmp_path / "out" / "01_ok.html").read_text()
    assert "02_bad.ipynb: cell 1" in capsys.readouterr().err


# --------------------------------------------------------------------------- notebooks from other tools


def _nbformat_40(path, *sources):
    """A notebook as Colab and older tools save it: nbformat 4.0, no cell ids."""
    cells = [{"cell_type": "code", "source": s, "metadata": {}, "outputs": [], "execution_count": None} for s in sources]
    path.write_text(json.dumps({"cells": [{"cell_type": "markdown", "source": ["# t\n", "old"], "metadata": {}}] + cells,
                                "metadata": {}, "nbformat": 4, "nbformat_minor": 0}))
    return path


def test_read_normalises_nbformat_40_with_stable_ids(tmp_path):
    path = _nbformat_40(tmp_path / "old.ipynb", "x = 1", "x = 1")
    nb = read(path)
    assert nb.nbformat_minor == 5 and nb.cells[0].source == "# t\nold"
    ids = [c.id for c in nb.cells]
    assert len(set(ids)) == 3 and ids == [c.id for c in read(path).cells]  # unique, and the same every time
    nbformat.validate(nb)


@pytest.mark.parametrize("content, reason", [
    ("", "empty file"),
    ('{"cells": [', "not a valid notebook (Notebook does not appear to be JSON"),
    ('{"cells": [{"cell_type": "code", "source": 3, "metadata": {}, "outputs": []}], "metadata": {}, "nbformat": 4, '
     '"nbformat_minor": 4}',
     "not a valid notebook (cell 0 is malformed)"),
])
def test_read_names_what_it_cannot_normalise(tmp_path, content, reason):
    path = tmp_path / "bad.ipynb"
    path.write_text(content)
    with pytest.raises(NotebookFormatError) as info:
        read(path)
    assert info.value.reason.startswith(reason) and str(info.value).startswith(f"{path}: {reason}")
    assert "\n" not in str(info.value)


def test_execute_runs_an_nbformat_40_notebook(tmp_path):
    path = _nbformat_40(tmp_path / "old.ipynb", "print(6 * 7)")
    assert execute_notebook(path, timeout=60).notebook.cells[1].outputs[0]["text"] == "42\n"


def test_build_command_exits_2_with_one_line_for_a_file_that_is_not_a_notebook(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "01_broken.ipynb").write_text("not json")
    assert main(["build", str(src), str(tmp_path / "out"), "--no-html"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "01_broken.ipynb: not a valid notebook" in err and err.count("\n") == 1
    assert main(["build", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2


def test_kernel_starts_are_serialised_across_processes(tmp_path):
    """While one process holds the kernel-start lock, another cannot take it (it would wait): two kernels
    never pick their ports at the same moment."""
    import subprocess
    import sys

    from mmcourse.classroom.notebooks import kernel_start_lock

    lock = tmp_path / "kernel-start.lock"
    probe = ("import fcntl, sys\nh = open(sys.argv[1], 'a')\ntry:\n    fcntl.flock(h, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
             "    print('free')\nexcept BlockingIOError:\n    print('held')\n")
    with kernel_start_lock(lock):
        inside = subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True, text=True).stdout.strip()
    after = subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True, text=True).stdout.strip()
    assert (inside, after) == ("held", "free")
