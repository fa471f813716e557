"""Stage 2a, the sandbox: where a student's kernel runs.

On Linux with bubblewrap (`bwrap`, Debian's `bubblewrap` package) each student's kernel runs in
its own mount, PID, network, IPC and UTS namespaces. It sees, read-only, only the Python
installation, the system libraries, the `mmcourse` package (without the grader's own files) and
the model cache; read-write, only a scratch folder holding the submission and a private folder
for the grader's requests and its answers. The solutions, the grader's files, the other
students' submissions, the references and the grader's process are not there to be read (no
`/proc/$PPID` leads out: the kernel's parent is the sandbox's init). It talks to the grader over
Unix sockets in its private folder, so it has no network at all. Each kernel's memory is limited
(RLIMIT_DATA) in either case.

Where bubblewrap is missing or cannot create namespaces (macOS, Windows, a container without
user namespaces), `isolation()` says so in one sentence: the grader prints it as a warning and
writes it in the `isolation` column of every row, and the kernels run as the grader's user
(values are still judged outside them, but a student's code can read what the grader can).
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager

PACKAGE = Path(__file__).resolve().parents[2]  # mmcourse/
GRADER = Path(__file__).resolve().parent  # mmcourse/classroom/grade/: hidden in the sandbox

# The kernel command runs under this: it sets the data-memory limit, then becomes the kernel.
_LIMIT_LAUNCHER = ("import os, resource, sys; n = int(sys.argv[1]); "
                   "resource.setrlimit(resource.RLIMIT_DATA, (n, n)); os.execvp(sys.argv[2], sys.argv[2:])")


@functools.lru_cache(maxsize=None)
def isolation(mode: str = "auto") -> tuple[bool, str]:
    """(isolated, one sentence for the CSV and the log). `mode`: "auto" (bubblewrap when it
    works), "bwrap" (the same, but an error when it does not) or "none"."""
    if mode == "none":
        return False, "none (--isolation none): kernels ran as the grader's user and could read its files"
    bwrap = shutil.which("bwrap")
    why = ""
    if sys.platform != "linux":
        why = f"not Linux ({sys.platform})"
    elif bwrap is None:
        why = "bubblewrap (bwrap) is not installed: apt-get install bubblewrap"
    else:
        probe = subprocess.run([bwrap, "--ro-bind", "/", "/", "--unshare-pid", "--unshare-net", "--die-with-parent",
                                "true"], capture_output=True, text=True)
        if probe.returncode != 0:
            why = f"bubblewrap cannot create namespaces here ({probe.stderr.strip()[:120]})"
    if why:
        if mode == "bwrap":
            raise ValueError(f"--isolation bwrap: {why}")
        return False, f"none: {why}; kernels ran as the grader's user and could read its files"
    return True, "bwrap (own mount, PID and network namespaces; solutions and grader hidden)"


def _cache_dirs() -> list[Path]:
    home = Path.home() / ".cache"
    dirs = [Path(os.environ["MMCOURSE_CACHE"])] if os.environ.get("MMCOURSE_CACHE") else [home / "mmcourse"]
    dirs += [Path(os.environ.get("HF_HOME", home / "huggingface")), Path(os.environ.get("TORCH_HOME", home / "torch"))]
    return [d.resolve() for d in dirs if d.exists()]


def _cache_view(private: Path) -> Path | None:
    """`private/cache`: a link to every file of the course's model cache (read-only in the sandbox).
    The kernel loads the models through the links; the lock files it takes and anything it saves
    land in this folder of its own, never in the cache the other kernels read."""
    home = Path.home() / ".cache" / "mmcourse"
    cache = Path(os.environ["MMCOURSE_CACHE"]) if os.environ.get("MMCOURSE_CACHE") else home
    if not cache.is_dir():
        return None
    view = private / "cache"
    view.mkdir(exist_ok=True)
    for entry in cache.resolve().iterdir():
        if not entry.name.endswith(".lock") and not (view / entry.name).exists():
            (view / entry.name).symlink_to(entry)
    return view


def bwrap_command(work: Path, private: Path) -> list[str]:
    """The bubblewrap prefix that runs a kernel in `work` (read-write, holding the submission),
    with `private` (read-write: the grader's requests, answers, sockets) and nothing else
    writable; see the module's docstring for what it can read."""
    cmd = ["bwrap", "--tmpfs", "/tmp"]
    for top in ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):  # Debian's merged /usr: /bin -> usr/bin
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.exists(top):
            cmd += ["--ro-bind", top, top]
    readable = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent}
    for path in sorted(p for p in readable if p.exists() and not str(p).startswith(("/usr/", "/etc/"))):
        cmd += ["--ro-bind", str(path), str(path)]
    cmd += ["--ro-bind", str(PACKAGE), str(PACKAGE), "--tmpfs", str(GRADER)]
    for cache in _cache_dirs():
        cmd += ["--ro-bind", str(cache), str(cache)]
    view = _cache_view(private)
    if view is not None:  # the model cache through links in a folder of its own: lock files and writes stay there
        cmd += ["--setenv", "MMCOURSE_CACHE", str(view)]
    cmd += ["--bind", str(work), str(work), "--bind", str(private), str(private),
            "--dev", "/dev", "--proc", "/proc",
            "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--die-with-parent", "--new-session",
            "--chdir", str(work), "--setenv", "HOME", "/tmp", "--setenv", "MPLCONFIGDIR", "/tmp",
            "--setenv", "JPY_PARENT_PID", "1",  # its parent is the sandbox's init (pid 1): not a reason to exit
            "--setenv", "PYTHONPATH", str(PACKAGE.parent)]
    return cmd


class _GradingKernelManager(AsyncKernelManager):
    """A kernel with a data-memory limit (RLIMIT_DATA, Unix: heap and private writable mappings,
    what tensors use; an allocation past it fails with MemoryError in the kernel instead of
    swapping the machine; not RLIMIT_AS, which also counts what every OpenMP thread only
    reserves), and, when `work` is set, inside the bubblewrap sandbox."""

    memory_bytes: int | None = None
    work: Path | None = None
    private: Path | None = None

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = super().format_kernel_cmd(extra_arguments)
        if self.memory_bytes and sys.platform != "win32":
            cmd = [sys.executable, "-c", _LIMIT_LAUNCHER, str(int(self.memory_bytes)), *cmd]
        if self.work is not None:
            cmd = [*bwrap_command(self.work, self.private), *cmd]
        return cmd


def kernel_manager_class(memory_mb: float | None, work: Path | None = None, private: Path | None = None) -> type:
    """A kernel-manager class for nbclient. With `work` and `private`: sandboxed, talking over
    Unix sockets in `private`, interrupted by message (a signal cannot cross the sandbox)."""
    attrs = {"memory_bytes": int(memory_mb * 2**20) if memory_mb else None, "work": work, "private": private}
    if work is not None:
        def __init__(self, *args, **kwargs):
            kwargs.update(transport="ipc", ip=str(private / "kernel"), connection_file=str(private / "kernel.json"))
            AsyncKernelManager.__init__(self, *args, **kwargs)
            self.kernel_spec.interrupt_mode = "message"
        attrs["__init__"] = __init__
    return type("_Kernel", (_GradingKernelManager,), attrs)
