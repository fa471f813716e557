"""mmcourse.notebooks: a failing cell names the notebook and the cell; `make course` builds."""
from __future__ import annotations

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from mmcourse.notebooks import NotebookCellError, build_course, execute_notebook, first_error


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
