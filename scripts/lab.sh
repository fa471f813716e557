#!/usr/bin/env bash
# Start JupyterLab on the course, on this machine only (127.0.0.1). Stop it with Ctrl-C in this terminal
# (JupyterLab asks to confirm; press Ctrl-C twice to stop at once) — or File > Shut Down in the browser.
# Port: $PORT, default 8888; when it is busy (another JupyterLab still running?) the next free port is used,
# and said so. Extra arguments go to `jupyter lab` (the browser test passes --no-browser, a port and a token).
set -euo pipefail
cd "$(dirname "$0")/.."
args=(--ServerApp.ip=127.0.0.1 --ServerApp.root_dir="$PWD"
      # offline: no news feed, no update check, no extension-manager queries
      --LabApp.news_url=None --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate
      --LabApp.extension_manager=readonly)
[ "$(id -u)" = 0 ] && args+=(--allow-root)   # JupyterLab refuses root without it
if [[ " $* " != *" --port="* && " $* " != *" --ServerApp.port="* ]]; then
    wanted="${PORT:-8888}"
    port=$(.venv/bin/python - "$wanted" <<'PY'
import socket, sys
start = int(sys.argv[1])
for port in range(start, start + 50):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(port)
        break
PY
)
    if [ -z "$port" ]; then
        echo "lab: ports $wanted-$((wanted + 49)) are all busy; stop another JupyterLab (\`jupyter lab list\`) or run \`make lab PORT=9000\`" >&2
        exit 1
    fi
    [ "$port" != "$wanted" ] && echo "lab: port $wanted is busy (another JupyterLab still running? \`.venv/bin/jupyter lab list\` shows it); using port $port"
    args+=(--ServerApp.port="$port" --ServerApp.port_retries=0)
    echo "lab: opening http://127.0.0.1:$port — stop it with Ctrl-C here (twice to skip the question)"
fi
# The reference CPU kernels (AVX2 on an x86-64 Linux CPU; nothing elsewhere), unless already set: a lesson that
# trains a model then prints the figures its text quotes, also on a CPU with AVX-512.
eval "$(.venv/bin/python -m mmcourse.classroom.course --cpu-exports)"
# Widgets' JavaScript ships with ipywidgets; nothing is fetched from the network.
exec .venv/bin/jupyter lab "${args[@]}" "$@"
