"""Tests for mmcourse.classroom.course: stamping executed cells, finding stale ones, cleaning outputs to commit.
(Executing a lesson in place is tested end to end in test_notebooks.py.)"""
import hashlib
import os
import subprocess
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from conftest import ROOT
from mmcourse.classroom import course
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


# The reference CPU kernels: AVX2 on an x86-64 Linux CPU that has it, nothing elsewhere.
_CPUINFO = "processor\t: 0\nmodel name\t: {model}\nflags\t\t: fpu sse2 {flags} fma\n\nprocessor\t: 1\n"


@pytest.mark.parametrize("machine, model, flags, expected", [
    ("x86_64", "AMD EPYC", "avx avx2 avx512f avx512bw", {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}),
    ("AMD64", "Intel Xeon", "avx avx2", {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}),
    ("x86_64", "an avx2 lookalike in the name", "avx sse4_2", {}),  # no avx2 flag: forcing AVX2 would crash
    ("aarch64", "Neoverse", "avx2", {}),  # ARM: torch's other kernels; nothing to cap
    ("arm64", "Apple M2", "", {}),
])
def test_reference_cpu_env_caps_x86_at_avx2_only_where_the_cpu_has_it(tmp_path, machine, model, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(_CPUINFO.format(model=model, flags=flags))
    assert course.reference_cpu_env(cpuinfo, machine=machine) == expected


def test_reference_cpu_env_sets_nothing_without_linux_cpuinfo(tmp_path):
    assert course.reference_cpu_env(tmp_path / "missing", machine="x86_64") == {}


def test_the_reference_env_carries_this_machines_cpu_caps():
    assert {k: course.REFERENCE_ENV.get(k) for k in course.reference_cpu_env()} == course.reference_cpu_env()


def test_the_suite_itself_computes_with_the_reference_kernels():
    """conftest.py sets the caps before anything imports torch (torch reads them at its first operation):
    this process, and the kernels nbval starts, train the weights the shipped ones were trained with."""
    import torch

    expected = course.REFERENCE_ENV.get("ATEN_CPU_CAPABILITY")
    if expected is None:
        pytest.skip("no reference cap on this machine (not x86-64 Linux with AVX2)")
    assert torch.backends.cpu.get_cpu_capability() == expected.upper()
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    kernel_like = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                 env={**os.environ, **course.REFERENCE_ENV})
    assert kernel_like.stdout.strip() == expected.upper()


def test_cpu_exports_print_shell_lines_and_keep_a_value_already_set(monkeypatch, capsys):
    monkeypatch.setattr(course, "reference_cpu_env", lambda: {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"})
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert course.main(["--cpu-exports"]) == 0
    assert capsys.readouterr().out.splitlines() == ["export ATEN_CPU_CAPABILITY=default", "export ONEDNN_MAX_CPU_ISA=AVX2"]
    monkeypatch.setattr(course, "reference_cpu_env", lambda: {})
    assert course.main(["--cpu-exports"]) == 0
    assert capsys.readouterr().out == ""


def test_make_lab_exports_the_reference_cpu_caps():
    script = (ROOT / "scripts" / "lab.sh").read_text()
    assert 'eval "$(.venv/bin/python -m mmcourse.classroom.course --cpu-exports)"' in script
    assert script.index("--cpu-exports") < script.index("exec .venv/bin/jupyter lab")
