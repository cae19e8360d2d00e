"""Quantized GGUF files, made by llama.cpp's ``llama_model_quantize`` from our F16/BF16 file.

The importance matrix (if any) goes in through ``llama_model_quantize_params.imatrix``:
a NULL-terminated array of ``llama_model_imatrix_data {name, data, size}``.  The call
runs in a worker thread so that Ctrl-C is seen at once (the output is a staged temporary
file, removed on interrupt; the native call cannot be cancelled and ends with the process).
"""

from __future__ import annotations

import collections
import ctypes
import os
import threading

import numpy as np

from ..artifacts.quant_types import QUANTS, QuantType  # the one table (re-exported)
from ..runtime.backends.llama_cpp import silence_logs
from ..util.errors import UserError


def parse_quants(text: str) -> list[QuantType]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError("--quant needs at least one type")
    out = []
    for n in names:
        if n not in QUANTS:
            raise UserError(f"unknown quant type {n!r} (choose from {', '.join(QUANTS)})")
        if QUANTS[n] not in out:
            out.append(QUANTS[n])
    return out


_ABANDONED: list = []


def llama_cpp_module():
    try:
        import llama_cpp
    except ImportError:
        raise UserError("quantizing needs llama.cpp's Python bindings: pip install 'userlm-local[llama]'") from None
    return llama_cpp


class _LogCapture:
    """Collect llama.cpp log lines during a call (to explain a failure), then restore quiet."""

    def __init__(self, ll):
        self.ll = ll
        self.lines = collections.deque(maxlen=200)
        self._cb = ll.llama_log_callback(self._log)

    def _log(self, level, text, data):
        try:
            self.lines.append((int(level), text.decode("utf-8", "replace")))
        except Exception:
            pass

    def __enter__(self):
        self.ll.llama_log_set(self._cb, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc):
        silence_logs(self.ll)

    def reason(self) -> str:
        errors = [t.strip() for lvl, t in self.lines if lvl >= 4 and t.strip()]
        if errors:
            return errors[-1]
        text = "".join(t for _, t in self.lines).strip().splitlines()
        return text[-1] if text else "no message"


def _imatrix_array(ll, imatrix: dict[str, np.ndarray]):
    if not hasattr(ll, "llama_model_imatrix_data"):
        raise UserError("the installed llama-cpp-python cannot take an importance matrix (upgrade it)")
    items = sorted(imatrix.items())
    arr = (ll.llama_model_imatrix_data * (len(items) + 1))()
    keep = []
    for i, (name, values) in enumerate(items):
        v = np.ascontiguousarray(values, dtype=np.float32)
        if not np.isfinite(v).all():
            raise UserError(f"importance matrix entry {name} has non-finite values")
        keep.append(v)
        arr[i].name = name.encode()
        arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = v.size
    arr[len(items)].name = None
    return arr, keep


def quantize(src, dest, qtype: QuantType, *, imatrix: dict[str, np.ndarray] | None = None,
             threads: int | None = None) -> None:
    """``llama_model_quantize(src -> dest)`` to ``qtype``; raise UserError with llama.cpp's reason."""
    if qtype.ours:
        raise ValueError(f"{qtype.label} is written directly, not quantized")
    ll = llama_cpp_module()
    params = ll.llama_model_quantize_default_params()
    params.ftype = qtype.ftype
    params.nthread = threads or os.cpu_count() or 1
    keep = arr = None
    if imatrix:
        arr, keep = _imatrix_array(ll, imatrix)
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(ll.llama_model_imatrix_data))
    result: dict = {}

    def work():
        try:
            result["rc"] = ll.llama_model_quantize(str(src).encode(), str(dest).encode(), ctypes.byref(params))
        except BaseException as exc:  # pragma: no cover - surfaced in the caller
            result["exc"] = exc

    with _LogCapture(ll) as log:
        t = threading.Thread(target=work, name=f"quantize-{qtype.name}", daemon=True)
        t.start()
        try:
            while t.is_alive():
                t.join(0.2)
        except BaseException:
            # interrupted: the native call still reads these; keep them alive until exit
            _ABANDONED.append((params, arr, keep))
            raise
    if "exc" in result:
        raise result["exc"]
    if result.get("rc") != 0:
        raise UserError(f"llama.cpp could not quantize to {qtype.label}: {log.reason()}")
