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
