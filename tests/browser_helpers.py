"""Helpers for `tests/test_browser.py`: start the course's JupyterLab and drive it in Chromium.

The server is started the way a learner starts it (`scripts/lab.sh`, i.e. `make lab`), on
127.0.0.1 with a random token, a free port, and settings/workspace folders of its own so the
test neither reads nor changes a learner's JupyterLab settings. The browser is Debian's
`chromium` (`scripts/install_browser.sh`) driven by the Python `playwright` package through
`executable_path`; `playwright install` is never needed. `MMCOURSE_CHROMIUM` points at another
Chromium binary (e.g. /usr/bin/chromium-browser elsewhere).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAB_SCRIPT = REPO / "scripts" / "lab.sh"
CHROMIUM = Path(os.environ.get("MMCOURSE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# JupyterLab must never reach the network: scripts/lab.sh passes the offline flags (no news
# feed, no update check, no PyPI extension manager) for learners and tests alike; passing them
# again here is an error ("news_url only accepts one value").

# User settings written into the server's private settings folder. `fetchNews`/`checkForUpdates`
# repeat the offline flags on the front-end side (no "Would you like to receive news?" toast);
# no autosave, so outputs of the test's runs are never written into the repo's notebooks;
# windowing "none" keeps every cell in the DOM so a search for error text sees all outputs.
LAB_USER_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def browser_unavailable_reason() -> str | None:
    """Why the browser test cannot run here, or None when Chromium and playwright are present."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package `playwright` is not installed (pip install -e '.[dev]')"
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (run scripts/install_browser.sh)"
    return None


PORT_ATTEMPTS = 3  # a picked port lost to another process before the server binds it: try another


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabServer:
    """A JupyterLab started through `scripts/lab.sh` in its own process group.

    Use as a context manager; `stop()` kills the whole process group (server and kernels)
    even when the test failed.
    """

    workdir: Path
    startup_timeout: float = 60.0
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "jupyterlab.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def lab_url(self, path: str) -> str:
        """The URL that opens `path` (relative to the repo) in a fresh JupyterLab workspace."""
        return f"{self.url}/lab/tree/{path}?reset&token={self.token}"

    def api(self, method: str, endpoint: str, timeout: float = 10.0):
        """Call the server's REST API; returns the decoded JSON (or None for an empty reply)."""
        req = urllib.request.Request(
            f"{self.url}/api/{endpoint}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def start(self) -> "LabServer":
        settings = self.workdir / "lab-settings"
        for name, value in LAB_USER_SETTINGS.items():
            (settings / name).parent.mkdir(parents=True, exist_ok=True)
            (settings / name).write_text(json.dumps(value))
        env = dict(
            os.environ,
            JUPYTERLAB_SETTINGS_DIR=str(settings),
            JUPYTERLAB_WORKSPACES_DIR=str(self.workdir / "lab-workspaces"),
            JUPYTER_RUNTIME_DIR=str(self.workdir / "runtime"),
            # no user-level Jupyter config or kernelspecs: the course's environment only
            JUPYTER_CONFIG_DIR=str(self.workdir / "config"),
            JUPYTER_DATA_DIR=str(self.workdir / "data"),
            MMCOURSE_NUM_THREADS=os.environ.get("MMCOURSE_NUM_THREADS", "1"),
            PYTHONUNBUFFERED="1",
        )
        args = [
            str(LAB_SCRIPT),
            "--no-browser",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",  # fail rather than silently take another port
            f"--IdentityProvider.token={self.token}",
            "--LabApp.expose_app_in_browser=True",  # window.jupyterapp, to run commands
            # checkpoints (written on open) go to the temporary folder, not next to the notebooks
            f"--FileCheckpoints.checkpoint_dir={self.workdir / 'checkpoints'}",
        ]
        tried = []
        for _ in range(PORT_ATTEMPTS):
            if self._start_once(args, env):
                return self
            # The port was free when picked, but something else (a kernel the other test worker started)
            # bound it before the server did: pick another.
            tried.append(self.port)
            self.port = free_port()
            args = [f"--port={self.port}" if a.startswith("--port=") else a for a in args]
        raise RuntimeError(f"JupyterLab found ports {tried} already in use each time it started; its log:\n"
                           f"{self.log()[-3000:]}")

    def _start_once(self, args, env) -> bool:
        """Start the server and wait until it answers. False: it lost its port to another process."""
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=self.log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,  # own process group, see stop()
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                log = self.log()
                if "already in use" in log:
                    return False
                raise RuntimeError(f"JupyterLab exited with code {code} during start-up; its log:\n{log[-3000:]}")
            try:
                self.api("GET", "status", timeout=2)
                return True
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(
            f"JupyterLab did not answer /api/status within {self.startup_timeout:.0f} s; "
            f"its log:\n{self.log()[-3000:]}"
        )

    def shutdown_kernels(self) -> None:
        """Shut down every kernel (frees the CPU between notebooks)."""
        for session in self.api("GET", "sessions"):
            self.api("DELETE", f"sessions/{session['id']}")

    def stop(self) -> None:
        """Stop the server and everything it started (its process group), gracefully first."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the server leads its own process group
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break  # nothing of the group is left
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.2)  # kernels that outlive the server get the SIGKILL
        self.log_file.close()
        self.proc = None

    def __enter__(self) -> "LabServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def launch_chromium(playwright):
    """Debian's Chromium, headless, through playwright's `executable_path`."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )


# --- driving one notebook in one page -------------------------------------------------------

_KERNEL_IDLE_JS = """() => {
    const w = window.jupyterapp.shell.currentWidget;
    const kernel = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
    const bar = document.querySelector('#jp-main-statusbar');
    // the status bar's "| Idle" is the reliable signal; the toolbar indicator goes idle too early
    return Boolean(kernel && kernel.status === 'idle' && bar && bar.innerText.includes('| Idle'));
}"""

# Everything a plot can be drawn as in an output: inline PNG/JPEG, SVG, a canvas (ipympl).
PLOT_SELECTOR = ".jp-OutputArea-output img, .jp-OutputArea-output svg, .jp-OutputArea-output canvas"

_PLOTS_SIGNATURE_JS = """(cell) => [...cell.querySelectorAll(%r)].map(e =>
    e.tagName === 'IMG' ? e.src : e.tagName === 'CANVAS' ? e.toDataURL() : e.outerHTML
).join('|')""" % PLOT_SELECTOR


def _writes_a_file(method: str, path: str) -> bool:
    """Whether a request to the server saves, creates, renames or deletes a file of the repo.

    Opening a notebook POSTs `.../checkpoints` (a copy kept in the server's temporary
    checkpoint folder, see `LabServer.start`): allowed. Restoring one (`.../checkpoints/<id>`)
    would overwrite the notebook: blocked.
    """
    if "/api/contents" not in path or method in {"GET", "HEAD"}:
        return False
    return not (method == "POST" and path.endswith("/checkpoints"))


class NotebookPage:
    """One Chromium page showing one notebook of a `LabServer` in JupyterLab.

    Blocked and recorded: every request off the server (a news feed, a CDN) in
    `offsite_requests`, and every write to the repo's files (a save, a rename) in
    `file_writes`, so a test run never changes the course's notebooks.
    """

    def __init__(self, page, server: LabServer):
        self.page = page
        self.server = server
        self.offsite_requests: list[str] = []
        self.file_writes: list[str] = []
        page.set_default_timeout(60_000)
        page.route("**/*", self._guard)

    def _guard(self, route) -> None:
        request = route.request
        url = request.url
        if not (url.startswith(self.server.url + "/") or url.startswith(("data:", "blob:"))):
            self.offsite_requests.append(url)
            route.abort()
        elif _writes_a_file(request.method, url.split("?")[0]):
            self.file_writes.append(f"{request.method} {url.split('?')[0]}")
            route.abort()
        else:
            route.continue_()

    def open(self, path: str, timeout: float = 90.0) -> None:
        """Open `path` (relative to the repo) and wait until its kernel is idle.

        The first call loads JupyterLab at the notebook's URL; later calls on the same page close what
        is open (unsaved changes dropped, nothing written) and open `path` in the running app, as a
        learner's File > Open does, which spares loading JupyterLab again (seconds per notebook)."""
        page = self.page
        if page.url.startswith(self.server.url) and page.evaluate("() => window.jupyterapp !== undefined"):
            self.close_all()
            page.evaluate("async (path) => { await window.jupyterapp.commands.execute('docmanager:open', {path}); }", path)
        else:
            page.goto(self.server.lab_url(path))
            page.wait_for_function("() => window.jupyterapp !== undefined")
            page.evaluate("async () => { await window.jupyterapp.restored; }")
        page.wait_for_function(
            """(path) => {
                if (document.querySelector('.jp-Dialog')) return true;  // e.g. "File Load Error"
                const w = window.jupyterapp.shell.currentWidget;
                return Boolean(w && w.context && w.context.path === path && w.context.isReady
                               && w.content && w.content.widgets);
            }""",
            arg=path,
            timeout=timeout * 1000,
            polling=100,
        )
        if self.dialogs():
            raise AssertionError(f"{path}: JupyterLab shows a dialog on opening: {self.dialogs()}")
        page.evaluate("() => window.jupyterapp.shell.collapseLeft()")  # more room for the notebook
        self.wait_kernel_idle(timeout)

    def close_all(self) -> None:
        """Close every document in the main area without saving, and forget the requests recorded so far."""
        self.page.evaluate(
            """() => { for (const w of Array.from(window.jupyterapp.shell.widgets('main'))) {
                           if (w.context && w.context.model) w.context.model.dirty = false;
                           w.dispose(); } }"""
        )
        self.offsite_requests.clear()
        self.file_writes.clear()

    def wait_kernel_idle(self, timeout: float = 90.0) -> None:
        self.page.wait_for_function(_KERNEL_IDLE_JS, timeout=timeout * 1000, polling=100)

    def kernel_idle(self) -> bool:
        return self.page.evaluate(_KERNEL_IDLE_JS)

    def run_all(self, timeout: float = 180.0) -> None:
        """Run all cells (the Run menu's "Run All Cells") and wait for the kernel to be idle."""
        ok = self.page.evaluate(
            "async () => await window.jupyterapp.commands.execute('notebook:run-all-cells')"
        )
        self.wait_kernel_idle(timeout)
        errors = self.error_outputs()
        assert ok and not errors, f"Run All Cells failed: {errors or 'JupyterLab reported a failure'}"

    def error_outputs(self) -> list[str]:
        """'cell N: Ename: evalue' for every error output in the notebook."""
        return [
            f"cell {i}: {out['ename']}: {out['evalue']}"
            for i, cell in enumerate(self.notebook_json()["cells"])
            for out in cell.get("outputs", [])
            if out.get("output_type") == "error"
        ]

    def cell_count(self) -> int:
        """How many cells JupyterLab rendered for the current notebook."""
        return self.page.evaluate(
            "() => window.jupyterapp.shell.currentWidget.content.widgets.length"
        )

    def notebook_json(self) -> dict:
        """The notebook as JupyterLab holds it (nbformat JSON, outputs included)."""
        return self.page.evaluate(
            "() => window.jupyterapp.shell.currentWidget.content.model.toJSON()"
        )

    def widget_views(self) -> tuple[int, int]:
        """(widget outputs in the notebook, of those rendered as a live widget view)."""
        in_model = sum(
            "application/vnd.jupyter.widget-view+json" in out.get("data", {})
            for cell in self.notebook_json()["cells"]
            for out in cell.get("outputs", [])
        )
        rendered = self.page.evaluate(
            """() => [...document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output')]
                .filter(e => !e.parentElement.closest('.jupyter-widgets'))  // top level only
                .filter(e => e.firstElementChild && e.firstElementChild.classList.contains('jupyter-widgets'))
                .length"""
        )
        return in_model, rendered

    def dialogs(self) -> list[str]:
        """Texts of the dialogs JupyterLab shows (an error on opening shows up here)."""
        return [d.inner_text() for d in self.page.locator(".jp-Dialog").all() if d.is_visible()]

    def notebook_text(self) -> str:
        return self.page.locator(".jp-NotebookPanel").first.inner_text()

    def wait_stable(self, signature, quiet: float = 1.5, timeout: float = 60.0) -> str:
        """Wait until `signature()` stays the same and the kernel idle for `quiet` seconds.

        Catches the last of several redraws rather than an intermediate one.
        Returns the final signature.
        """
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            current = signature() if self.kernel_idle() else None
            if current is None or current != last:
                last, since = current, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return current
            time.sleep(0.2)
        raise TimeoutError(f"the page did not settle within {timeout:.0f} s")

    def plots_signature(self, cell) -> str:
        """A hash of the drawn content of every plot in `cell`'s outputs (image data, SVG, canvas)."""
        drawn = cell.evaluate(_PLOTS_SIGNATURE_JS)
        return hashlib.sha256(drawn.encode()).hexdigest()[:16] if drawn else ""

    def screenshot(self, path: Path) -> bytes:
        path.parent.mkdir(parents=True, exist_ok=True)
        return self.page.screenshot(path=str(path))
