"""The value protocol: how a student's kernel hands values to the grader as plain data.

The grader never runs a student's code in a process that decides a grade. After a graded cell
has run in the student's (sandboxed) kernel, the grader sends this module's source to that
kernel and asks it to call each graded function on inputs the trusted reference run recorded
(`serve`). The kernel writes back plain data only: a JSON tree (numbers, strings, lists,
tuples, dicts) and the tensors and arrays it holds, as one safetensors file. Never pickle, never
an object with methods: whatever the student's code returned (a tensor subclass whose
`__torch_function__` lies, a float subclass whose `__sub__` returns 0, a patched `torch`) is
read back by `decode` as plain `torch.Tensor`s, `float`s and `str`s, which is all the judge
(`mmcourse.classroom.grade.reference`) ever compares.

The inputs go the other way (grader → kernel) as a cloudpickle written by the trusted reference
run: they are the grader's own data, and unpickling them only happens in the student's kernel.

This file is sent to the student's kernel as source and executed there (the kernel cannot import
the grader's package: the sandbox hides it), so it imports nothing from `mmcourse`.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import signal
import sys
import time
import traceback

MAX_RESULT_BYTES = 256 * 2**20  # what the grader reads of a kernel's answer file
MAX_DEPTH = 40  # nesting of a value the grader decodes
MAX_ITEMS = 100_000  # nodes of a value the grader decodes
_PRINT_CHARS = 2_000


class Unreadable:
    """A value the protocol cannot carry as plain data (a model, a function, a generator...):
    equal to nothing, so a check comparing it fails and says what it was."""

    def __init__(self, what: str):
        self.what = what

    def __repr__(self) -> str:
        return f"<{self.what}, which the grader cannot read back as plain data>"

    def __eq__(self, other) -> bool:
        return False

    __hash__ = None


# --------------------------------------------------------------------------- encoding (any side)


def encode(value, tensors: dict, _depth: int = 0):
    """`value` as a JSON-able tree; tensors and arrays go into `tensors` (name -> plain,
    contiguous CPU tensor) and are referenced by name."""
    torch = sys.modules.get("torch")
    np = sys.modules.get("numpy")
    if _depth > MAX_DEPTH:
        return {"other": "a value nested too deeply"}
    if value is None or type(value) in (bool, str):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return {"int": str(int(value))}
    if isinstance(value, float):
        return {"float": float(value).hex()}
    if isinstance(value, str):
        return {"str": str.__str__(value)}
    if torch is not None and isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        plain = torch.Tensor._make_subclass(torch.Tensor, value.detach()) if type(value) is not torch.Tensor \
            else value.detach()
        if plain.is_complex() or plain.is_sparse or plain.layout != torch.strided:
            return {"other": f"a {plain.dtype} {plain.layout} tensor"}
        tensors[name] = plain.cpu().contiguous().clone()
        return {"tensor": name, "grad": bool(value.requires_grad)}
    if np is not None and isinstance(value, np.ndarray) and torch is not None:
        if value.dtype.kind not in "biuf":
            return {"other": f"a numpy array of {value.dtype}"}
        name = f"t{len(tensors)}"
        tensors[name] = torch.from_numpy(np.ascontiguousarray(value)).clone()
        return {"ndarray": name}
    if np is not None and isinstance(value, np.generic):
        return encode(value.item(), tensors, _depth + 1)
    if torch is not None and isinstance(value, torch.dtype):
        return {"dtype": str(value)}
    if torch is not None and isinstance(value, torch.Generator):  # its state: where it will draw next
        return {"generator": encode(value.get_state(), tensors, _depth + 1)}
    if torch is not None and isinstance(value, torch.nn.Module):
        state = dict(value.state_dict())  # and the gradients a step left (grad:<name>)
        state.update({f"grad:{n}": p.grad for n, p in value.named_parameters() if p.grad is not None})
        return {"module": type(value).__name__, "state": encode(state, tensors, _depth + 1)}
    if isinstance(value, tuple):
        return {"tuple": [encode(v, tensors, _depth + 1) for v in tuple.__iter__(value)]}
    if isinstance(value, list):
        return {"list": [encode(v, tensors, _depth + 1) for v in list.__iter__(value)]}
    if isinstance(value, dict):
        return {"dict": [[encode(k, tensors, _depth + 1), encode(v, tensors, _depth + 1)]
                         for k, v in dict.items(value)]}
    if hasattr(value, "state_dict") and callable(value.state_dict):  # an optimizer, a scheduler
        try:
            return {"state_of": type(value).__name__, "state": encode(value.state_dict(), tensors, _depth + 1)}
        except Exception:  # noqa: BLE001
            pass
    return {"other": _type_name(value)}


def _type_name(value) -> str:
    if callable(value):
        return "a function" if type(value).__name__ in ("function", "method", "builtin_function_or_method") \
            else f"a callable {type(value).__name__}"
    return f"a {type(value).__name__}"


def decode(tree, tensors: dict, _depth: int = 0, _count: list | None = None):
    """The plain value `encode` described: only None, bool, int, float, str, torch.Tensor,
    tuple, list, dict and `Unreadable` (for what could not be carried). Raises ValueError on a
    malformed tree (never anything else the tree asks for)."""
    count = _count if _count is not None else [0]
    count[0] += 1
    if _depth > MAX_DEPTH or count[0] > MAX_ITEMS:
        raise ValueError("value too large or nested too deeply")
    if tree is None or type(tree) in (bool, str):
        return tree
    if type(tree) is not dict or len(tree) not in (1, 2):
        raise ValueError(f"malformed value node {type(tree).__name__}")
    (kind, body), *rest = tree.items()
    if kind == "int" and type(body) is str and len(body) < 5000:
        return int(body)
    if kind == "float" and type(body) is str:
        return float.fromhex(body)
    if kind == "str" and type(body) is str:
        return body
    if kind in ("tensor", "ndarray") and type(body) is str:
        if body not in tensors:
            raise ValueError(f"missing tensor {body}")
        t = tensors[body]
        if rest and rest[0] == ("grad", True) and t.is_floating_point():
            t = t.clone().requires_grad_(True)
        return t
    if kind == "dtype" and type(body) is str:
        import torch

        dtype = getattr(torch, body.replace("torch.", ""), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {body}")
        return dtype
    if kind in ("tuple", "list") and type(body) is list:
        items = [decode(v, tensors, _depth + 1, count) for v in body]
        return tuple(items) if kind == "tuple" else items
    if kind == "dict" and type(body) is list:
        out = {}
        for pair in body:
            if type(pair) is not list or len(pair) != 2:
                raise ValueError("malformed dict entry")
            key = decode(pair[0], tensors, _depth + 1, count)
            if not isinstance(key, (str, int, float, bool, tuple, type(None))):
                raise ValueError("unhashable dict key")
            out[key] = decode(pair[1], tensors, _depth + 1, count)
        return out
    if kind == "generator":
        state = decode(body, tensors, _depth + 1, count)
        if not (type(state).__name__ == "Tensor" and state.dtype.is_floating_point is False):
            raise ValueError("malformed generator state")
        return {"__generator__": state}
    if kind in ("module", "state_of") and rest:
        return {"__state__": decode(rest[0][1], tensors, _depth + 1, count), "__type__": str(body)[:80]}
    if kind == "other":
        return Unreadable(str(body)[:80])
    raise ValueError(f"malformed value node {kind!r}")


def digest(value) -> str:
    """A fingerprint of a call's inputs: equal inputs, equal digest (tensors by dtype, shape and
    bytes; objects by their state where they have one, else by type)."""
    tensors: dict = {}
    tree = encode(value, tensors)
    h = hashlib.sha256(json.dumps(tree, sort_keys=True).encode())
    for name in sorted(tensors, key=lambda n: int(n[1:])):
        t = tensors[name]
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(-1).numpy().tobytes() if t.dtype != __import__("torch").bfloat16
                 else t.float().numpy().tobytes())
    return h.hexdigest()[:32]


def write_answer(path: str, tree, tensors: dict) -> None:
    """One file: 8 bytes of JSON length, the JSON tree, then a safetensors blob."""
    from safetensors.torch import save

    blob = save(tensors) if tensors else b""
    text = json.dumps(tree).encode()
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        f.write(blob)


def read_answer(path: str):
    """(tree, tensors) from a file `write_answer` wrote (or a student forged: it is only parsed
    as JSON and safetensors). Raises ValueError when it is not such a file."""
    from safetensors.torch import load

    size = os.path.getsize(path)
    if size > MAX_RESULT_BYTES:
        raise ValueError(f"the answer is {size / 2**20:.0f} MB, more than the grader reads")
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("truncated answer")
    try:
        tree = json.loads(data[8:8 + n])
        tensors = load(data[8 + n:]) if len(data) > 8 + n else {}
    except Exception as err:  # noqa: BLE001 - any parse error is the same: unreadable
        raise ValueError(f"unreadable answer ({type(err).__name__})") from None
    return tree, tensors


# --------------------------------------------------------------------------- the student's kernel


class _Timeout(BaseException):
    pass


class _LibraryAnswer(BaseException):
    pass


@contextlib.contextmanager
def _time_limit(seconds):
    def _raise(signum, frame):
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.1)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _resolve(dotted: str):
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except Exception:  # noqa: BLE001
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


@contextlib.contextmanager
def _tripwires(dotted_names, hits: list):
    """While the body runs, every function in `dotted_names` (the library's own answers) raises
    instead of answering, wherever the student's code found it (its code object is swapped, so
    an alias bound earlier trips too); the names called are appended to `hits`."""
    swapped = []
    for dotted in dotted_names:
        fn = _resolve(dotted)
        fn = getattr(fn, "__func__", fn)
        code = getattr(fn, "__code__", None)
        if code is None:
            continue
        short = dotted.rsplit(".", 1)[-1]

        def tripwire(*args, _hits=hits, _name=dotted, **kwargs):
            _hits.append(_name)
            raise _LibraryAnswer(_name)

        try:
            if code.co_freevars:
                continue
            fn.__code__ = tripwire.__code__.replace(co_name=short)
            fn.__defaults__, fn.__kwdefaults__, old_defaults = None, {"_hits": hits, "_name": dotted}, \
                (fn.__defaults__, fn.__kwdefaults__)
            swapped.append((fn, code, old_defaults))
        except (TypeError, ValueError, AttributeError):
            continue
    try:
        yield
    finally:
        for fn, code, (defaults, kwdefaults) in swapped:
            fn.__code__, fn.__defaults__, fn.__kwdefaults__ = code, defaults, kwdefaults


def _error_record(err: BaseException, hits: list, limit: float = 0.0) -> dict:
    if hits:
        return {"library": hits[0]}
    if isinstance(err, _Timeout):
        return {"timeout": True, "limit": limit}
    line = ""
    try:
        frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename.startswith("<ipython-input")
                  or f.filename.startswith("/tmp/ipykernel") or "ipykernel_" in f.filename]
        if frames:
            line = f" (line {frames[-1].lineno}: `{(frames[-1].line or '')[:80]}`)"
    except Exception:  # noqa: BLE001
        pass
    try:
        message = str(err)[:300]
    except Exception:  # noqa: BLE001
        message = ""
    return {"error": type(err).__name__[:80], "message": message, "line": line}


def serve(request: str, answer: str, timeout: float) -> None:
    """In the student's kernel: answer the grader's request file `request` into `answer`.

    The request is a list of {"name", "kind": "call" | "value", "args", "kwargs", "forbid"}. For a
    call, the function the notebook defines under that name is called on the inputs (each under
    `timeout` seconds, printing captured, the library's own answers in `forbid` tripped); what
    it returns and what its inputs hold afterwards are written back as plain data."""
    import torch

    shell = sys.modules["IPython"].get_ipython()
    namespace = shell.user_ns
    with open(request, "rb") as f:
        calls = torch.load(f, weights_only=False)
    tensors: dict = {}
    answers = []
    hung: set = set()  # a function that timed out once is not waited for again
    for call in calls:
        name = call["name"]
        if name in hung and call["kind"] == "call":
            answers.append({"timeout": True, "limit": timeout})
            continue
        if name not in namespace:
            answers.append({"missing": name})
            continue
        obj = namespace[name]
        if call["kind"] == "value":
            try:
                answers.append({"value": encode(obj, tensors)})
            except Exception as err:  # noqa: BLE001
                answers.append({"value": {"other": f"a value that could not be read ({type(err).__name__})"}})
            continue
        if not callable(obj):
            answers.append({"value": encode(obj, tensors), "not_callable": True})
            continue
        args, kwargs, hits = call["args"], call["kwargs"], []
        try:  # the generators as they were when the reference made this call
            if call.get("rng") is not None:
                torch.set_rng_state(call["rng"])
            if call.get("random") is not None:
                __import__("random").setstate(call["random"])
        except Exception:  # noqa: BLE001
            pass
        out, err, printed, t0 = None, None, io.StringIO(), time.monotonic()
        try:
            with _tripwires(call.get("forbid", ()), hits), _time_limit(timeout), \
                    contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
                out = obj(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - whatever the student's code does, it is an answer
            err = e
        record = {"seconds": round(time.monotonic() - t0, 3)}
        if isinstance(err, _Timeout):
            hung.add(name)
        if hits and err is None:
            err = _LibraryAnswer(hits[0])
        try:
            if err is not None:
                record.update(_error_record(err, hits, timeout))
            else:
                record["returned"] = encode(out, tensors)
                record["after"] = encode([list(args), dict(kwargs)], tensors)
        except BaseException as e:  # noqa: BLE001
            record = {"error": type(e).__name__[:80], "message": "while reading back its result", "line": ""}
        answers.append(record)
    write_answer(answer, {"answers": answers}, tensors)
