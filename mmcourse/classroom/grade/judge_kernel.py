"""Runs inside the trusted judge kernel (never a student's): record the reference calls while the
teacher's solution notebook runs, then replay each student's plain-data answers through the
same graded cells.

1. **Record** (`begin_record`/`end_record` around each graded cell of the solution): the
   namespace is snapshotted, the RNG seeded from the run's secret seed and the cell's id, and each
   graded function (a name the exercise's answer cells define and the graded cell passes to a
   check) is wrapped: every call's inputs are kept (deep copies, taken before the call) with a
   digest. `dump_requests` writes them, per graded cell, for the students' kernels.
2. **Judge** (`begin_judge`/`end_judge`): for one student, the namespace is put back as it was
   before the cell, the RNG seeded the same way, and each graded name bound to the student's
   answer: a value decoded from plain data, or a stub that answers a call from the student's
   recorded results, found by the inputs' digest. The graded cell (hidden tests included) then
   runs unchanged: the course's own checks compare, diagnose and word the result, but every
   value they see from the student is a plain tensor, number or string.
"""
from __future__ import annotations

import builtins
import copy
import random
import sys
import zlib

from mmcourse.classroom.grade.protocol import Unreadable, decode, digest, read_answer

_STATE: dict = {"snapshots": {}, "calls": {}, "names": {}, "originals": {}, "forbid": {}, "hits": []}


def _ns() -> dict:
    return sys.modules["IPython"].get_ipython().user_ns


def _seed(seed: int, key: str) -> None:
    import numpy as np
    import torch

    s = (seed ^ zlib.crc32(key.encode())) & 0x7FFFFFFF
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s)


def begin_record(key: str, names: list[str], seed: int) -> None:
    ns = _ns()
    _STATE["snapshots"][key] = dict(ns)
    _STATE["names"][key] = list(names)
    calls: list = []
    _STATE["calls"][key] = calls
    _STATE["originals"][key] = {n: ns[n] for n in names if n in ns}
    for name in names:
        if name not in ns:
            raise NameError(f"the solution defines no `{name}` before this graded cell")
        obj = ns[name]
        if callable(obj) and not isinstance(obj, type):
            ns[name] = _recorder(name, obj, calls)
    _seed(seed, key)


def _recorder(name, fn, calls):
    seen = {c["digest"] for c in calls}

    def recorded(*args, **kwargs):
        key = digest([list(args), dict(kwargs)])
        if key not in seen:
            import torch

            seen.add(key)
            try:
                inputs = copy.deepcopy((args, kwargs))
            except Exception:  # noqa: BLE001 - then the student's kernel cannot get this input
                inputs = None
            # the generators' state at the call: a function that draws (dropout, sampling) draws the same
            calls.append({"name": name, "digest": key, "inputs": inputs, "rng": torch.get_rng_state(),
                          "random": random.getstate()})
        return fn(*args, **kwargs)

    recorded.__name__ = getattr(fn, "__name__", name)
    recorded.__doc__ = getattr(fn, "__doc__", None)
    return recorded


def end_record(key: str) -> None:
    _ns().update(_STATE["originals"][key])


def dump_requests(folder: str, forbid: dict) -> dict:
    """Write `folder/<key>.pt` for each graded cell: the calls a student's kernel must answer.
    Returns {key: [names it could not send]} (inputs that cannot be pickled)."""
    import os

    import cloudpickle
    import torch

    _STATE["forbid"] = forbid
    problems = {}
    for key, names in _STATE["names"].items():
        originals = _STATE["originals"][key]
        request = []
        for name in names:
            if not callable(originals.get(name)) or isinstance(originals.get(name), type):
                request.append({"name": name, "kind": "value"})
        for call in _STATE["calls"][key]:
            if call["inputs"] is None:
                problems.setdefault(key, []).append(call["name"])
                continue
            args, kwargs = call["inputs"]
            request.append({"name": call["name"], "kind": "call", "args": args, "kwargs": kwargs,
                            "rng": call.get("rng"), "random": call.get("random"),
                            "forbid": tuple(forbid.get(call["name"], ())), "digest": call["digest"]})
        _STATE.setdefault("requests", {})[key] = [{k: v for k, v in r.items() if k in ("name", "kind", "digest")}
                                                  for r in request]
        try:
            with open(os.path.join(folder, f"{key}.pt"), "wb") as f:
                torch.save(request, f, pickle_module=cloudpickle)
        except Exception as err:  # noqa: BLE001
            problems.setdefault(key, []).append(f"{type(err).__name__}: {err}")
    return problems


# --------------------------------------------------------------------------- judging


class NotAnswered(Exception):
    """The student's kernel was not asked this call (a check tried a new input)."""


def _exception(record: dict) -> BaseException:
    from mmcourse.classroom.checks.core import StudentTimeout

    if "timeout" in record:
        limit = record.get("limit")
        return StudentTimeout(f"took longer than {limit:g} s" if limit else "took longer than the grader allows")
    if "library" in record:
        short = record["library"].rsplit(".", 1)[-1]
        return RuntimeError(f"you called mmcourse's {short}; this exercise asks you to write it")
    name = str(record.get("error", "Exception"))
    message = str(record.get("message", "")) + str(record.get("line", ""))
    cls = getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = type(name if name.isidentifier() else "Error", (Exception,), {})
    try:
        return cls(message)
    except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError wants 5 arguments
        return type(name, (Exception,), {})(message)


def _apply_after(received, after) -> None:
    """Put the state the student's call left in its inputs into the inputs the check passed."""
    import torch

    if isinstance(received, torch.Tensor) and isinstance(after, torch.Tensor):
        if received.shape == after.shape:
            with torch.no_grad():
                received.copy_(after.to(received.dtype))
        return
    if isinstance(received, torch.Generator) and isinstance(after, dict) and "__generator__" in after:
        try:
            received.set_state(after["__generator__"])
        except Exception:  # noqa: BLE001
            pass
        return
    if isinstance(after, dict) and "__state__" in after and hasattr(received, "load_state_dict"):
        state = after["__state__"] if isinstance(after["__state__"], dict) else {}
        grads = {k[5:]: v for k, v in state.items() if isinstance(k, str) and k.startswith("grad:")}
        try:
            received.load_state_dict({k: v for k, v in state.items() if not (isinstance(k, str) and k.startswith("grad:"))})
            if hasattr(received, "named_parameters"):
                for name, param in received.named_parameters():
                    g = grads.get(name)
                    param.grad = g.to(param.dtype) if isinstance(g, torch.Tensor) and g.shape == param.shape else None
        except Exception:  # noqa: BLE001 - a state the student's code broke: the check sees the old one
            pass
        return
    if isinstance(received, (list, tuple)) and isinstance(after, (list, tuple)) and len(received) == len(after):
        for r, a in zip(received, after):
            _apply_after(r, a)
    elif isinstance(received, dict) and isinstance(after, dict):
        for k in received:
            if k in after:
                _apply_after(received[k], after[k])


def _stub(name, answers):
    def student(*args, **kwargs):
        key = digest([list(args), dict(kwargs)])
        record = answers.get(key)
        if record is None:
            raise NotAnswered(f"the grader did not ask your kernel for `{name}` on this input")
        if "library" in record:
            _STATE["hits"].append(record["library"])
        if "returned" not in record:
            raise _exception(record)
        _apply_after([list(args), dict(kwargs)], record["after"])
        return record["returned"]

    student.__name__ = name
    return student


def begin_judge(key: str, seed: int, answer_path: str | None) -> str:
    """Bind the student's answers for graded cell `key`; returns "" or why the answers could not
    be read (then every graded name is left undefined)."""
    ns = _ns()
    ns.clear()
    ns.update(_STATE["snapshots"][key])
    _STATE["hits"] = []
    names, requests = _STATE["names"][key], _STATE["requests"][key]
    problem = ""
    answers: list = []
    tensors: dict = {}
    if answer_path is None:
        problem = "no answer"
    else:
        try:
            tree, tensors = read_answer(answer_path)
            if type(tree) is not dict or type(tree.get("answers")) is not list:
                raise ValueError("not an answer")
            answers = tree["answers"]
            if len(answers) != len(requests):
                raise ValueError("answer of the wrong length")
        except Exception as err:  # noqa: BLE001 - whatever a forged file does, it is unreadable
            problem = f"the kernel's answer could not be read ({type(err).__name__}: {str(err)[:100]})"
            answers = []
    by_digest: dict = {}
    values: dict = {}
    for request, raw in zip(requests, answers):
        try:
            record = _decode_record(raw, tensors)
        except Exception as err:  # noqa: BLE001 - RecursionError, OverflowError...: unreadable
            record = {"error": "ValueError", "message": f"unreadable answer ({err})"}
        if "missing" in record:
            values[request["name"]] = None
            continue
        if request["kind"] == "value" or record.get("not_callable"):
            values[request["name"]] = record.get("value", Unreadable("nothing"))
            continue
        by_digest.setdefault(request["name"], {})[request["digest"]] = record
    for name in names:
        ns.pop(name, None)
        if problem:
            continue  # undefined: the cell fails with a NameError, the row says why
        if name in values:
            if values[name] is not None:
                ns[name] = values[name]
            continue  # None: the student's notebook has no such name
        ns[name] = _stub(name, by_digest.get(name, {}))
    _seed(seed, key)
    return problem


def _decode_record(raw, tensors) -> dict:
    if type(raw) is not dict:
        raise ValueError("not a record")
    record = {}
    for k, v in raw.items():
        if k in ("returned", "after", "value"):
            record[k] = decode(v, tensors)
        elif k in ("missing", "error", "message", "line", "library") and type(v) is str:
            record[k] = v
        elif k in ("timeout", "not_callable") and v is True:
            record[k] = True
        elif k == "limit" and type(v) in (int, float):
            record[k] = float(v)
    if "returned" in record and "after" not in record:
        raise ValueError("no state after the call")
    return record


def end_judge(key: str) -> list:
    """The library answers the student's calls tripped while this cell was judged."""
    return sorted(set(_STATE["hits"]))
