"""Seeding, device selection, threads, notebook setup."""
from __future__ import annotations

import random

import matplotlib as mpl
import numpy as np
import pytest
import torch

from mmcourse.utils import get_device, seed_everything, set_threads, setup_notebook


def _draw():
    return random.random(), np.random.rand(), torch.rand(3)


def test_seed_everything_repeats_all_three_generators():
    seed_everything(123)
    a = _draw()
    seed_everything(123)
    b = _draw()
    assert a[0] == b[0] and a[1] == b[1]
    torch.testing.assert_close(a[2], b[2], rtol=0, atol=0)
    seed_everything(124)
    assert _draw()[0] != a[0]


def test_seed_everything_returns_a_seeded_generator():
    g1, g2 = seed_everything(5), seed_everything(5)
    assert torch.equal(torch.randn(4, generator=g1), torch.randn(4, generator=g2))


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True])
def test_seed_must_be_a_non_negative_int(bad):
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        seed_everything(bad)


def test_get_device_defaults_to_cpu_without_accelerators(monkeypatch):
    monkeypatch.delenv("MMCOURSE_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert get_device() == torch.device("cpu")


def test_get_device_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.delenv("MMCOURSE_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert get_device() == torch.device("mps")


def test_get_device_environment_override(monkeypatch):
    monkeypatch.setenv("MMCOURSE_DEVICE", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_device() == torch.device("cpu")


def test_requesting_a_missing_accelerator_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        get_device("cuda")


def test_set_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1
        monkeypatch.setenv("MMCOURSE_NUM_THREADS", "2")
        assert set_threads() == 2
        with pytest.raises(ValueError, match="num_threads must be >= 1"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_setup_notebook_seeds_styles_and_reports(capsys, monkeypatch):
    monkeypatch.setenv("MMCOURSE_NUM_THREADS", "1")
    device = setup_notebook(seed=7)
    x = torch.rand(2)
    seed_everything(7)
    torch.testing.assert_close(x, torch.rand(2))
    assert isinstance(device, torch.device)
    assert mpl.rcParams["figure.dpi"] == 80
    assert "device=" in capsys.readouterr().out


def test_an_unknown_device_name_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("MMCOURSE_DEVICE", "bogus")
    with pytest.raises(ValueError, match="unknown device 'bogus'"):
        get_device()


def test_setup_notebook_defaults_to_the_reference_thread_count(capsys, monkeypatch):
    """A learner's JupyterLab sets no thread variable: the lessons then run on the reference setup (one thread)."""
    from mmcourse.utils import REFERENCE_THREADS

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("MMCOURSE_NUM_THREADS", raising=False)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(2)
        setup_notebook()
        assert torch.get_num_threads() == REFERENCE_THREADS == 1
        assert "threads=1," in capsys.readouterr().out
        monkeypatch.setenv("MMCOURSE_NUM_THREADS", "2")  # asked for: honoured
        setup_notebook(quiet=True)
        assert torch.get_num_threads() == 2
        assert setup_notebook(quiet=True, threads=1) is not None and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_torch_threads_sets_and_restores(monkeypatch):
    from mmcourse.utils import torch_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch_threads(1) as n:
            assert n == 1 and torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), torch_threads(1):
            raise RuntimeError("restored even after an error")
        assert torch.get_num_threads() == 2
        for bad in (0, 1.5, True, "2"):
            with pytest.raises(ValueError, match="num_threads must be an int >= 1"), torch_threads(bad):
                pass
    finally:
        torch.set_num_threads(before)


def test_file_lock_makes_a_second_process_wait_and_creates_its_folder(tmp_path):
    """The lock behind the model cache and the kernel-start lock: a child asking while we hold it waits."""
    import subprocess
    import sys
    import time

    from mmcourse._filelock import file_lock

    lock = tmp_path / "deep" / "folder" / "x.lock"
    child = ("import sys, time; from mmcourse._filelock import file_lock\n"
             "t = time.monotonic()\nwith file_lock(sys.argv[1]):\n    print(time.monotonic() - t)")
    with file_lock(lock):
        assert lock.exists()
        proc = subprocess.Popen([sys.executable, "-c", child, str(lock)], stdout=subprocess.PIPE, text=True)
        time.sleep(2.0)
        assert proc.poll() is None  # still waiting for us
    waited = float(proc.communicate(timeout=60)[0])
    assert waited > 0.5  # it got the lock only once we let go (its start-up took part of the 2 s)
    lock.write_text("kept")
    with file_lock(lock):  # never truncated
        pass
    assert lock.read_text() == "kept"
