"""Forged feature files (tiny pickles that ask for gigabytes, or hold no bytes for their shape) and a bounded child
process to read them in: shared by the feature-store and data-check tests."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def _text(value: str) -> bytes:
    data = value.encode()
    return pickle.SHORT_BINUNICODE + bytes([len(data)]) + data


def _int(value: int) -> bytes:
    data = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
    return pickle.LONG1 + bytes([len(data)]) + data


def _tuple(*items: bytes) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def _short_bytes(data: bytes) -> bytes:
    return pickle.SHORT_BINBYTES + bytes([len(data)]) + data


def _call(function: bytes, *args: bytes) -> bytes:
    return function + _tuple(*args) + pickle.REDUCE


def _global(module: str, name: str) -> bytes:
    return _text(module) + _text(name) + pickle.STACK_GLOBAL


P4 = pickle.PROTO + b"\x04"
NDARRAY = _global("numpy", "ndarray")
F2 = _call(_global("numpy", "dtype"), _text("f2"))
EMPTY = _call(_global("numpy.core.multiarray", "_reconstruct"), NDARRAY, _tuple(_int(0)), _short_bytes(b"b"))


def _filled(shape: tuple[int, ...], data: bytes) -> bytes:
    """numpy's own layout: an empty array, then BUILD with (version, shape, dtype, fortran, data)."""
    state = _tuple(_int(1), _tuple(*map(_int, shape)), F2, pickle.NEWFALSE, _short_bytes(data))
    return P4 + EMPTY + state + pickle.BUILD + pickle.STOP


# kind -> (file bytes, words of the one guard that must refuse it)
FORGED = {
    # _reconstruct(ndarray, (2**33,), b"b"): numpy would allocate 8 GiB for the "empty" array
    "array shape": (
        P4 + _call(_global("numpy.core.multiarray", "_reconstruct"), NDARRAY, _tuple(_int(2**33)), _short_bytes(b"b"))
        + pickle.STOP,
        "asks _reconstruct for an array of shape (8589934592,)",
    ),
    # BINBYTES8 claiming 16 GiB of data: the C unpickler allocates the bytes object before reading
    "bytes length": (P4 + pickle.BINBYTES8 + struct.pack("<Q", 2**34) + b"xx.", "BINBYTES8 asks for 17179869184"),
    # a FRAME of 16 GiB: read into one buffer
    "frame length": (P4 + pickle.FRAME + struct.pack("<Q", 2**34) + b"N.", "a frame of 17179869184 bytes"),
    # LONG_BINPUT at index 2**31: the memo table is grown to hold it
    "memo index": (P4 + b"N" + pickle.LONG_BINPUT + struct.pack("<I", 2**31) + b".", "index 2147483648 is beyond"),
    # numpy.ndarray((2**30, 1), "f2"): 2 GiB of uninitialised memory (data check's values pass: 950 MB RSS)
    "ndarray call, gigabytes": (
        P4 + _call(NDARRAY, _tuple(_int(2**30), _int(1)), _text("f2")) + pickle.STOP,
        "calls numpy.ndarray",
    ),
    # numpy.ndarray((356, 1024), "f2"): a feature-shaped array of whatever memory held (zeros, or "2 NaN values")
    "ndarray call, feature shape": (
        P4 + _call(NDARRAY, _tuple(_int(356), _int(1024)), _text("f2")) + pickle.STOP,
        "calls numpy.ndarray",
    ),
    # the same through protocol 2's GLOBAL opcode and a numpy.dtype object: what a header-only check reads
    "ndarray call, header only": (
        pickle.PROTO + b"\x02" + pickle.GLOBAL + b"numpy\nndarray\n"
        + _tuple(_tuple(_int(356), _int(1024)), F2) + pickle.REDUCE + pickle.STOP,
        "calls numpy.ndarray",
    ),
    # numpy's own layout, but 8 bytes of data for a 2 GiB shape
    "data shorter than the shape": (_filled((2**30, 1), bytes(8)), "buffer size does not match array size"),
    # numpy's own layout with no data bytes at all
    "no data bytes": (_filled((356, 1024), b""), "buffer size does not match array size"),
    # protocol 5's _frombuffer over 8 bytes for a (356, 1024) shape
    "frombuffer short": (
        P4 + _call(_global("numpy._core.numeric", "_frombuffer"), _short_bytes(bytes(8)), F2,
                   _tuple(_int(356), _int(1024)), _text("C")) + pickle.STOP,
        "cannot reshape array of size 4",
    ),
}  # fmt: skip


def _npy_header_only() -> bytes:
    """A valid .npy header asking for 2**33 float16 values, and no data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f2", "fortran_order": False, "shape": (2**33, 1)})
    return buf.getvalue()


FORGED_NPY = _npy_header_only()

# The child's address space may grow by this much past what its imports took; every forged file asks for more.
HEADROOM_BYTES = 512 * 2**20
_BOUNDED_CHILD = r"""
import importlib, json, resource, sys, tracemalloc

jobs = json.loads(sys.stdin.read())
calls = [getattr(importlib.import_module(job["call"].split(":")[0]), job["call"].split(":")[1]) for job in jobs]
size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + HEADROOM, size + HEADROOM))


def run(job, call):  # in a function, so that what one job returned is freed before the next one runs
    try:
        result = call(*job["args"], **job.get("kwargs", {}))
        return {"result": result if isinstance(result, (dict, list, str, type(None))) else repr(result)[:300]}
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)[:1000]}


tracemalloc.start()
for job, call in zip(jobs, calls):
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]  # numpy leaves a failed allocation traced: count from here
    out = run(job, call)
    out["peak_mb"] = (tracemalloc.get_traced_memory()[1] - before) / 2**20
    print(json.dumps(out), flush=True)
"""


def run_bounded(jobs: list[dict]) -> list[dict]:
    """Run ``{"call": "module:function", "args": [...], "kwargs": {...}}`` jobs in one child Python whose address
    space may grow by ``HEADROOM_BYTES`` past its imports (RLIMIT_AS: an allocation beyond fails at once, even one
    the kernel would grant lazily). Per job: ``{"result"}`` or ``{"error", "message"}``, and ``"peak_mb"``, how far
    the tracemalloc peak (numpy's and Python's allocations, a failed one included) rose while it ran."""
    code = _BOUNDED_CHILD.replace("HEADROOM", str(HEADROOM_BYTES))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(jobs).encode(), capture_output=True, timeout=120,
        cwd=REPO, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    results = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert len(results) == len(jobs), out.stderr.decode()[-3000:]
    return results


def plain_load(path: str) -> str:
    """``pickle.load`` as the original reads feature files; the array's shape and dtype and the file's size."""
    with open(path, "rb") as f:
        array = pickle.load(f)
    return f"{array.shape} {array.dtype} from {Path(path).stat().st_size} bytes"
