#!/usr/bin/env bash
# Start JupyterLab on the course, on this machine only (127.0.0.1).
# Extra arguments go to `jupyter lab` (the browser test passes --no-browser, a port and a token).
set -euo pipefail
cd "$(dirname "$0")/.."
args=(--ServerApp.ip=127.0.0.1 --ServerApp.root_dir="$PWD"
      # offline: no news feed, no update check, no extension-manager queries
      --LabApp.news_url=None --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate
      --LabApp.extension_manager=readonly)
[ "$(id -u)" = 0 ] && args+=(--allow-root)   # JupyterLab refuses root without it
# Widgets' JavaScript ships with ipywidgets; nothing is fetched from the network.
exec .venv/bin/jupyter lab "${args[@]}" "$@"
