"""Small helpers every lesson uses: seeding, device choice, threads, notebook setup.

A lesson's one setup cell is::

    from mmcourse.utils import setup_notebook
    device = setup_notebook()
"""
from __future__ import annotations

import contextlib
import os
import random
import warnings

import numpy as np
import torch

DEFAULT_SEED = 0
# The lessons' reference setup: one torch thread. The thread count changes the order in which
# floating-point sums are taken (a convolution's weight gradient is split across threads), so two
# runs that differ only in threads train different weights and print different figures.
REFERENCE_THREADS = 1


def seed_everything(seed: int = DEFAULT_SEED) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices) so a run can be repeated.

    Args:
        seed: any non-negative integer.

    Returns:
        A `torch.Generator` seeded with `seed`, for code that wants its own stream
        (e.g. a `DataLoader(generator=...)`) without touching the global one.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds CUDA and MPS generators
    return torch.Generator().manual_seed(seed)


def get_device(prefer: str | None = None) -> torch.device:
    """The device to run on: CUDA if present, else Apple MPS, else CPU.

    Args:
        prefer: force a device ("cpu", "cuda", "mps", "cuda:1"); the environment variable
            `MMCOURSE_DEVICE` does the same without a code change.

    Returns:
        A `torch.device`. Lessons are written and timed for the CPU; they run unchanged
        on a GPU.
    """
    choice = prefer or os.environ.get("MMCOURSE_DEVICE")
    if choice:
        try:
            device = torch.device(choice)
        except RuntimeError:
            raise ValueError(f"unknown device {choice!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {choice!r} requested but CUDA is not available")
        if device.type == "mps" and not _mps_available():
            raise ValueError(f"device {choice!r} requested but MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def set_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op threads; returns the number in force.

    Small models on a laptop gain little past the number of physical cores, and lose a
    lot when several processes each use all cores (as when the test suite runs notebooks
    in parallel). Default: `MMCOURSE_NUM_THREADS` if set, else the standard
    `OMP_NUM_THREADS` (what a grader or a cluster sets), else the number of cores, at most 4.

    Raises:
        ValueError: the number, or the variable it came from, is not an integer >= 1.
    """
    if num_threads is None:
        for var in ("MMCOURSE_NUM_THREADS", "OMP_NUM_THREADS"):
            value = os.environ.get(var, "").strip()
            if value:
                try:
                    num_threads = int(value)
                except ValueError:
                    raise ValueError(f"{var} must be a whole number of threads, got {value!r}") from None
                break
        else:
            num_threads = min(os.cpu_count() or 1, 4)
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    torch.set_num_threads(num_threads)
    return torch.get_num_threads()


@contextlib.contextmanager
def torch_threads(num_threads: int = REFERENCE_THREADS):
    """Run a block with `num_threads` torch intra-op threads, then restore the caller's number.

    The course trains its cached models inside `torch_threads(1)` (`mmcourse.pretrained.train_or_load_model`):
    with a different thread count a convolution's gradient is summed in another order, and after a few
    hundred steps the weights — and the lessons' quoted figures — differ (e.g. 15% instead of 18%).
    With one thread (and the same CPU kernels: `mmcourse.classroom.course.reference_cpu_env`) a cached
    model is the same on every machine.

    Raises:
        ValueError: `num_threads` is not an integer >= 1.
    """
    if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
        raise ValueError(f"num_threads must be an int >= 1, got {num_threads!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield num_threads
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def quiet_hf_loading():
    """Load Hugging Face weights without their "Loading weights" progress bar (a widget in a
    notebook: noise for a learner, and output that a lesson's committed run would not match).
    The previous setting is restored on exit; without `transformers` installed this does nothing."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def setup_notebook(seed: int = DEFAULT_SEED, quiet: bool = False, threads: int | None = None) -> torch.device:
    """The setup every lesson calls once: seed, threads, plot style, quiet warnings.

    Args:
        seed: seed for Python, NumPy and torch.
        quiet: if False, print one line with the device, threads and versions.
        threads: torch threads. Default: `MMCOURSE_NUM_THREADS`, else `OMP_NUM_THREADS` if set (as
            `set_threads`), else `REFERENCE_THREADS` (1): the setup the lessons' printed figures were
            made with. With more threads, models trained in the lesson itself can end with other
            weights and print other figures (cached models always train with one thread), and the
            small models here gain little from more threads.

    Returns:
        The device from `get_device()`.

    Raises:
        ValueError: `threads` or `MMCOURSE_NUM_THREADS` is not an integer >= 1.
    """
    seed_everything(seed)
    if threads is None and not any(os.environ.get(v, "").strip() for v in ("MMCOURSE_NUM_THREADS", "OMP_NUM_THREADS")):
        threads = REFERENCE_THREADS
    threads = set_threads(threads)
    device = get_device()
    _plot_style()
    # Noise a learner cannot act on; real problems still raise.
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*IProgress not found.*")
    if not quiet:
        print(f"mmcourse ready: device={device.type}, threads={threads}, seed={seed}, torch {torch.__version__}")
    return device


def _plot_style() -> None:
    import matplotlib as mpl

    mpl.rcParams.update(
        {
            "figure.figsize": (6.0, 4.0),
            "figure.dpi": 80,  # small PNGs keep notebooks light
            "savefig.dpi": 80,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.titlesize": 12,
            "image.cmap": "viridis",
        }
    )
    try:  # inline backend in Jupyter, Agg elsewhere
        from IPython import get_ipython

        ip = get_ipython()
        if ip is not None and "IPKernelApp" in ip.config:
            ip.run_line_magic("matplotlib", "inline")
            ip.run_line_magic("config", "InlineBackend.figure_formats = ['png']")
    except Exception:  # pragma: no cover - IPython missing or unusual frontends
        pass
