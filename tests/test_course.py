"""Tests for mmcourse.classroom.course: stamping executed cells, finding stale ones, cleaning outputs to commit.
(Executing a lesson in place is tested end to end in test_notebooks.py.)"""
import hashlib

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from conftest import ROOT
from mmcourse.classroom.course import (MAX_LESSON_BYTES, STAMP_KEY, WIDGET_VIEW, clean_outputs, lessons, source_hash,
                                       stale_cells, stamp)


def executed(*sources):
    nb = new_notebook(cells=[new_markdown_cell("# 99 · x")] + [new_code_cell(s, execution_count=i + 1)
                                                              for i, s in enumerate(sources)])
    return nb


def test_source_hash_is_sha256_of_the_text_and_ignores_line_endings():
    assert source_hash("print(1)") == hashlib.sha256(b"print(1)").hexdigest()[:16]
    assert source_hash("a\r\nb") == source_hash("a\nb") != source_hash("a\nc")


def test_stamped_cells_are_fresh_until_edited_or_added():
    nb = executed("x = 1", "print(x)")
    assert [p.split(" (")[0] for p in stale_cells(nb)] == ["Cell 0", "Cell 1"]  # executed, never stamped
    stamp(nb)
    assert stale_cells(nb) == []
    assert nb.cells[1].metadata[STAMP_KEY] == {"source_sha256": source_hash("x = 1")}
    nb.cells[2].source = "print(x + 1)"
    assert stale_cells(nb) == ["Cell 1 (`print(x + 1)`) was edited after it was run"]
    nb.cells[2].source = "print(x)"
    nb.cells.append(new_code_cell("y = 2"))  # added: no execution count, no stamp
    assert stale_cells(nb) == ["Cell 2 (`y = 2`) was never executed by `make course`"]
    nb.cells[0].source += "\nprose edits need no re-run"
    assert len(stale_cells(nb)) == 1


def test_clean_outputs_drops_widget_views_state_and_timestamps_and_joins_streams():
    nb = executed("print(1); print(2); w")
    cell = nb.cells[1]
    cell.metadata["execution"] = {"iopub.status.busy": "2026-11-30T15:00:00"}
    cell.outputs = [new_output("stream", name="stdout", text="1\n"), new_output("stream", name="stdout", text="2\n"),
                    new_output("stream", name="stderr", text="progress\n"),
                    new_output("display_data", data={WIDGET_VIEW: {"model_id": "abc"}, "text/plain": "VBox()"}),
                    new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Figure>"})]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    clean_outputs(nb)
    assert "widgets" not in nb.metadata and "execution" not in cell.metadata
    assert [(o.output_type, o.get("name")) for o in cell.outputs] == [("stream", "stdout"), ("stream", "stderr"),
                                                                      ("display_data", None)]
    assert cell.outputs[0].text == "1\n2\n" and "image/png" in cell.outputs[2].data
    nbformat.validate(nb)


def test_clean_outputs_drops_progress_bar_stubs_and_keeps_printed_text():
    nb = executed("fit(...)")
    cell = nb.cells[1]
    bar = "training:   0%|          | 0/400 [00:00<?, ?step/s]\rtraining:  50%|#####     | 200/400 [00:02<00:02, 90step/s]\r"
    cell.outputs = [new_output("stream", name="stderr", text=bar),
                    new_output("stream", name="stdout", text="epoch 1: 50%\n\nloss 0.25\n"),
                    new_output("display_data", data={"text/plain": "HBox(children=(FloatProgress(value=0.0, max=400.0),))"}),
                    new_output("stream", name="stderr", text=bar + "a real warning\n"),
                    new_output("stream", name="stdout", text="done\n")]
    clean_outputs(nb)
    assert [(o.output_type, o.get("name"), o.text) for o in cell.outputs] == [
        ("stream", "stdout", "epoch 1: 50%\n\nloss 0.25\n"), ("stream", "stderr", "a real warning\n"),
        ("stream", "stdout", "done\n")]
    nbformat.validate(nb)


def test_lessons_are_found_by_glob_in_course_order():
    found = lessons()
    assert found and found == sorted(found) and all(p.parent == ROOT / "notebooks" for p in found)
    assert all(p.name[:2].isdigit() and p.name[2] == "_" for p in found)
    assert MAX_LESSON_BYTES == 1_000_000


def test_execute_lesson_gives_the_kernel_an_absolute_cache(tmp_path, monkeypatch):
    # the kernel runs in the notebook's folder: a relative cache path would point somewhere else
    import nbformat as nbf

    from mmcourse.classroom import course

    seen = {}

    def fake_execute(path, timeout, env, name):
        seen.update(env)
        nb = nbf.v4.new_notebook()

        class Report:
            notebook, seconds, cell_seconds = nb, 0.0, []
        return Report()

    monkeypatch.setattr("mmcourse.classroom.notebooks.execute_notebook", fake_execute)
    monkeypatch.chdir(tmp_path)
    lesson = tmp_path / "99_x.ipynb"
    nbf.write(nbf.v4.new_notebook(), str(lesson))
    course.execute_lesson(lesson, cache="build/cache")
    assert seen["MMCOURSE_CACHE"] == str(tmp_path / "build" / "cache")


def test_machine_gflops_is_two_n_cubed_over_the_median_time(monkeypatch):
    import pytest

    from mmcourse.classroom import course

    seen = {}

    def fake(n, min_run_time):
        seen.update(n=n, min_run_time=min_run_time)
        return 0.004  # seconds per product
    monkeypatch.setattr(course, "_median_product_seconds", fake)
    assert course.machine_gflops(n=200, min_run_time=0.5) == pytest.approx(2 * 200**3 / 0.004 / 1e9)  # 4 GFLOP/s
    assert seen == {"n": 200, "min_run_time": 0.5}
    for bad in (dict(n=0), dict(min_run_time=0.0)):
        with pytest.raises(ValueError, match="n >= 1 and min_run_time > 0"):
            course.machine_gflops(**bad)


def test_machine_gflops_times_a_real_product_on_one_thread_and_restores_the_threads():
    import statistics
    import time

    import torch

    from mmcourse.classroom import course

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rate = course.machine_gflops(n=128, min_run_time=0.05)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    a = torch.randn(128, 128)
    times = []
    for _ in range(20):  # the same rate measured naively, within a factor of 10 (a shared machine is noisy)
        start = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - start)
    naive = 2 * 128**3 / statistics.median(times) / 1e9
    assert naive / 10 < rate < naive * 10
