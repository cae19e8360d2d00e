"""``OnnxWriter``: an ONNX model whose weights stream to one external-data file.

An explicit state machine that raises on misuse::
    w = OnnxWriter(directory)             # OPEN: model.onnx.data created
    ref = w.tensor("name", array)         # appended at an aligned offset; returns the TensorProto
    w.inline("shape", small_array)        # a constant kept in the graph (shape inputs)
    with w.stream("name", dtype, shape) as put:  # a large tensor written in row chunks
        put(chunk); put(chunk)
    w.finish(graph_nodes, inputs, outputs, opsets)  # FINISHED: model.onnx written, data closed
    w.abort()                             # ABORTED: the data file closed (the caller deletes the directory)

Only the graph (a few hundred kilobytes) lives in memory; a tensor is in memory only while it
is being written, and ``stream`` holds one chunk at a time.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from ..util.errors import UserError

DATA_FILE = "model.onnx.data"
MODEL_FILE = "model.onnx"
ALIGN = 4096  # onnxruntime memory-maps external data; page-aligned tensors map without copies

OPEN, FINISHED, ABORTED = "open", "finished", "aborted"


class WriterStateError(RuntimeError):
    pass


def _onnx():
    try:
        import onnx
    except ImportError:
        raise UserError("converting to ONNX needs the 'onnx' extra: pip install 'userlm-local[onnx]'") from None
    return onnx


class OnnxWriter:
    def __init__(self, directory: Path):
        self.onnx = _onnx()
        self.dir = Path(directory)
        self.data = open(self.dir / DATA_FILE, "wb")
        self.state = OPEN
        self.names: set[str] = set()
        self.initializers: list = []
        self.streaming = False

    def _check(self, name: str | None = None) -> None:
        if self.state != OPEN:
            raise WriterStateError(f"the writer is {self.state}")
        if self.streaming:
            raise WriterStateError("a streamed tensor is still being written")
        if name is not None and name in self.names:
            raise WriterStateError(f"tensor {name!r} written twice")

    def _align(self) -> int:
        pos = self.data.tell()
        pad = (-pos) % ALIGN
        if pad:
            self.data.write(b"\0" * pad)
        return pos + pad

    def _proto(self, name: str, dtype: np.dtype, shape: tuple[int, ...], offset: int, length: int):
        onnx = self.onnx
        t = onnx.TensorProto()
        t.name = name
        t.data_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        t.dims.extend(int(d) for d in shape)
        t.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", DATA_FILE), ("offset", str(offset)), ("length", str(length))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        self.names.add(name)
        self.initializers.append(t)
        return t

    def tensor(self, name: str, array: np.ndarray):
        """Write a whole tensor now."""
        self._check(name)
        array = np.ascontiguousarray(array)
        offset = self._align()
        self.data.write(array.tobytes())
        return self._proto(name, array.dtype, array.shape, offset, array.nbytes)

    def inline(self, name: str, array: np.ndarray):
        """A small constant kept inside ``model.onnx`` (shape inputs must be, for shape inference)."""
        self._check(name)
        t = self.onnx.numpy_helper.from_array(np.asarray(array), name)
        self.names.add(name)
        self.initializers.append(t)
        return t

    @contextlib.contextmanager
    def stream(self, name: str, dtype, shape: tuple[int, ...]):
        """Write a tensor as consecutive row chunks; the chunks must fill ``shape`` exactly."""
        self._check(name)
        dtype = np.dtype(dtype)
        offset = self._align()
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        written = 0
        self.streaming = True

        def put(chunk: np.ndarray) -> None:
            nonlocal written
            chunk = np.ascontiguousarray(chunk, dtype=dtype)
            if written + chunk.nbytes > expected:
                raise WriterStateError(f"tensor {name!r}: more data than its shape {shape}")
            self.data.write(chunk.tobytes())
            written += chunk.nbytes

        try:
            yield put
        finally:
            self.streaming = False
        if written != expected:
            raise WriterStateError(f"tensor {name!r}: {written} bytes written, its shape {shape} needs {expected}")
        self._proto(name, dtype, shape, offset, expected)

    def finish(self, nodes: list, inputs: list, outputs: list, opsets: dict[str, int], name: str = "userlm") -> Path:
        """Write ``model.onnx`` (the graph, referring to the data file) and close the data file."""
        self._check()
        onnx = self.onnx
        self.data.flush()
        self.data.close()
        graph = onnx.helper.make_graph(nodes, name, inputs, outputs, initializer=self.initializers)
        model = onnx.helper.make_model(
            graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets.items()],
            producer_name="userlm-local", ir_version=10)
        path = self.dir / MODEL_FILE
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
        self.state = FINISHED
        return path

    def abort(self) -> None:
        if self.state == OPEN:
            self.data.close()
        self.state = ABORTED
