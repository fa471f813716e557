"""The course's shipped weights: build them from scratch, and check them.

Every model a lesson or an assignment loads (through `mmcourse.recipes`) ships with the course in
`mmcourse/recipes/weights/`, as the course's own recipes trained it on the reference setup (one torch
thread): a lesson's first run loads it instead of waiting for training (see `mmcourse.recipes.cache`).
They are generated files, like the exercises and the lessons' outputs:

    python -m mmcourse.classroom.weights           # rebuild: run every lesson and solution from scratch
    python -m mmcourse.classroom.weights --check   # the manifest matches the files (exit 1 if not)

Rebuilding runs every lesson, then every solution, in course order in fresh kernels with an empty
model cache and `MMCOURSE_SHIPPED_WEIGHTS=0` (so every model trains, as on a machine without shipped
weights), then replaces the folder's models with the ones that run trained and writes `MANIFEST.json`
(file, bytes, SHA-256, and the torch version and thread count they were trained with). It prints each
notebook's from-scratch time. The notebooks themselves are not rewritten (`make course` does that).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

from mmcourse.classroom.course import REFERENCE_ENV, ROOT, lessons
from mmcourse.recipes.cache import SHIPPED_WEIGHTS

MANIFEST = "MANIFEST.json"


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_files(folder: Path = SHIPPED_WEIGHTS) -> list[Path]:
    """The model files in `folder`, sorted by name."""
    return sorted(folder.glob("*.pt"))


def manifest_problems(folder: Path = SHIPPED_WEIGHTS) -> list[str]:
    """What is wrong between `folder`'s models and its `MANIFEST.json`, one line each (empty: all right).

    A model not in the manifest, a manifest entry without its file, or a file whose bytes changed (a
    model copied by hand, a half-written file, a Git checkout that stored a pointer instead of the file).
    """
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        return [f"{manifest_path}: missing; run `make weights`"]
    entries = json.loads(manifest_path.read_text())["files"]
    files = {p.name: p for p in shipped_files(folder)}
    problems = [f"{name}: in the folder but not in {MANIFEST}; run `make weights`" for name in sorted(set(files) - set(entries))]
    problems += [f"{name}: listed in {MANIFEST} but missing; run `make weights`" for name in sorted(set(entries) - set(files))]
    for name in sorted(set(files) & set(entries)):
        if files[name].stat().st_size != entries[name]["bytes"] or sha256(files[name]) != entries[name]["sha256"]:
            problems.append(f"{name}: its bytes differ from the ones {MANIFEST} records; run `make weights`")
    return problems


def write_manifest(folder: Path = SHIPPED_WEIGHTS) -> dict:
    """Write `folder/MANIFEST.json` for the models in it; returns what it wrote."""
    import torch

    manifest = {"trained_with": {"torch": torch.__version__.split("+")[0], "threads": int(REFERENCE_ENV["MMCOURSE_NUM_THREADS"]),
                                 "cpu": REFERENCE_ENV.get("ATEN_CPU_CAPABILITY", "native")},
                "files": {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in shipped_files(folder)}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def build(notebooks: list[Path], cache: Path, folder: Path = SHIPPED_WEIGHTS) -> int:
    """Run `notebooks` in order from an empty `cache` with shipped weights off, then make `folder`
    hold exactly the models they trained. Returns the number of notebooks that failed (then `folder`
    is left as it was)."""
    from mmcourse.classroom.notebooks import NotebookCellError, execute_notebook

    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    env = {**REFERENCE_ENV, "MMCOURSE_CACHE": str(cache.resolve()), "MMCOURSE_SHIPPED_WEIGHTS": "0"}
    failures, total = 0, 0.0
    for number, path in enumerate(notebooks, 1):
        before = set(cache.glob("*.pt"))
        start = time.perf_counter()
        try:
            execute_notebook(path, env=env, timeout=1800, name=str(path))
        except NotebookCellError as err:
            failures += 1
            print(f"FAILED {err}", file=sys.stderr)
            continue
        seconds = time.perf_counter() - start
        total += seconds
        trained = sorted(p.name for p in set(cache.glob("*.pt")) - before if not p.name.endswith(".partial.pt"))
        print(f"[{number}/{len(notebooks)}] {path}: {seconds:5.1f} s from scratch"
              + (f"; trained: {', '.join(trained)}" if trained else ""), flush=True)
    if failures:
        print(f"{failures} notebook(s) failed: {folder} left unchanged", file=sys.stderr)
        return failures
    for old in shipped_files(folder):
        old.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    for new in sorted(cache.glob("*.pt")):
        if not new.name.endswith(".partial.pt"):
            shutil.copy2(new, folder / new.name)
    manifest = write_manifest(folder)
    size = sum(entry["bytes"] for entry in manifest["files"].values())
    print(f"{len(manifest['files'])} models ({size / 1e6:.1f} MB) written to {folder}; {total / 60:.1f} min of notebooks")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmcourse.classroom.weights", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the manifest against the files (exit 1 if they differ)")
    parser.add_argument("--cache", type=Path, default=ROOT / "build" / "weights-cache",
                        help="the empty model cache the notebooks train into (default: build/weights-cache)")
    args = parser.parse_args(argv)
    if args.check:
        problems = manifest_problems()
        print("\n".join(problems) if problems else f"{SHIPPED_WEIGHTS}: every model matches {MANIFEST}")
        return 1 if problems else 0
    return build(lessons() + lessons(ROOT / "solutions"), args.cache)


if __name__ == "__main__":
    sys.exit(main())
