"""Importance matrix computed by us: mean of squared inputs per input column of every
linear layer, keyed by GGUF tensor name.

llama.cpp's ``llama-imatrix`` is a CLI that the Python wheel does not ship, so we run the
checkpoint in torch, one decoder layer at a time (``layerwise.run_layers``: a few GB for an
8B, whatever the precision), over calibration conversations and look at the input of every
linear layer.  For a weight ``W`` of shape ``[out, in]`` the entry is ``mean over tokens of
x[:, j]**2`` for ``j < in``: exactly what ``llama-quantize`` derives from an imatrix file
(``in_sum2 / counts``).  The Q/K row permutation of the GGUF does not touch input columns,
so HF columns are GGUF columns.

The result can be saved in llama.cpp's GGUF imatrix format (``<name>.in_sum2`` and
``<name>.counts`` tensors, ``general.type = imatrix``), which ``llama-quantize --imatrix``
also reads, and loaded back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifacts.gguf_meta import GGUFFile
from ..util.errors import UserError
from .layerwise import run_layers, torch_threads
from .llama_arch import gguf_name
from .source import Source


@dataclass
class ImatrixResult:
    sums: dict[str, np.ndarray]  # GGUF tensor name -> sum of x² per input column (float64)
    counts: dict[str, int]  # tokens seen per tensor
    conversations: int
    tokens: int
    origin: str
    chunk_size: int
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    datasets: list[str] | None = None  # what it was computed on: a read file's imatrix.datasets; else [origin]

    def means(self) -> dict[str, np.ndarray]:
        """What the quantizer wants: mean of x² per column (float32)."""
        return {k: (v / max(1, self.counts[k])).astype(np.float32) for k, v in self.sums.items()}

    def describe(self) -> dict:
        return {"conversations": self.conversations, "tokens": self.tokens, "calibration": self.origin,
                "datasets": self.datasets if self.datasets is not None else [self.origin],
                "tensors": len(self.sums), "max_tokens_per_conversation": self.chunk_size,
                "seconds": round(self.seconds, 2), **self.extra}


def compute_imatrix(source: Source, conversations: list[list[int]], *, origin: str, dtype: str = "float32",
                    chunk_size: int = 512, threads: int | None = None, progress: bool = True) -> ImatrixResult:
    """Run the checkpoint over ``conversations`` (token ids, each cut to ``chunk_size``) and
    collect the sum of x² per input column of every linear layer, keyed by GGUF name."""
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        raise UserError("computing an importance matrix needs torch: pip install 'userlm-local[torch]'") from None

    t0 = time.perf_counter()
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def collect(hf_name: str, x) -> None:
        name = gguf_name(hf_name)
        if name is None:
            return
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        s = (x * x).sum(dim=0)
        if name in sums:
            sums[name] += s
        else:
            sums[name] = s
        counts[name] = counts.get(name, 0) + x.shape[0]

    convs = [ids[:chunk_size] for ids in conversations]
    with torch_threads(threads), torch.inference_mode():
        run_layers(source, convs, ["F32"], dtype=dtype, on_linear=collect, progress=progress,
                   desc=f"imatrix ({len(convs)} conversations, layer by layer)")
    if not sums:
        raise UserError(f"{source.path}: no linear layers found to calibrate")
    out = {k: v.numpy() for k, v in sums.items()}
    for k, v in out.items():
        if not np.isfinite(v).all():
            raise UserError(f"the importance matrix of {k} has non-finite values (overflow in {dtype}?)")
    return ImatrixResult(out, counts, len(convs), sum(len(c) for c in convs), origin, chunk_size,
                         time.perf_counter() - t0, {"dtype": dtype})


def save_imatrix(result: ImatrixResult, path: Path) -> None:
    """Write llama.cpp's GGUF imatrix format (``llama-quantize --imatrix`` reads it)."""
    import gguf

    w = gguf.GGUFWriter(path=None, arch="imatrix")
    for kv in w.kv_data:  # llama-imatrix writes no architecture
        kv.pop("general.architecture", None)
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", result.datasets if result.datasets is not None else [result.origin])
    w.add_uint32("imatrix.chunk_count", result.conversations)
    w.add_uint32("imatrix.chunk_size", result.chunk_size)
    for name in sorted(result.sums):
        w.add_tensor(f"{name}.in_sum2", result.sums[name].astype(np.float32).reshape(1, -1))
        w.add_tensor(f"{name}.counts", np.array([[float(result.counts[name])]], dtype=np.float32))
    w.write_header_to_file(path=path)
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def load_imatrix(path: Path) -> ImatrixResult:
    """Read a GGUF imatrix (ours or llama-imatrix's)."""
    f = GGUFFile(path)  # a file that is not GGUF, or damaged: one line
    try:
        data = {name: np.asarray(f.tensor(name), dtype=np.float32) for name in f.tensors}
    except ValueError as exc:  # a quantized tensor: not an imatrix
        raise UserError(f"{path}: not a GGUF imatrix file ({exc})") from None
    sums, counts = {}, {}
    for key, arr in data.items():
        if key.endswith(".in_sum2"):
            name = key[: -len(".in_sum2")]
            c = data.get(name + ".counts")
            if c is None or c.size != 1:
                raise UserError(f"{path}: {name} has no single counts entry (expert imatrices are not supported)")
            sums[name] = arr.reshape(-1).astype(np.float64)
            counts[name] = int(c.reshape(-1)[0])
    if not sums:
        raise UserError(f"{path}: no imatrix entries (expected '<tensor>.in_sum2' tensors)")

    def field_value(key, default=None):
        return f.kv.get(key, default)

    chunks = field_value("imatrix.chunk_count", 0) or 0
    datasets = field_value("imatrix.datasets", []) or []
    return ImatrixResult(sums, counts, int(chunks), int(max(counts.values())),
                         f"file {path.name} (datasets: {', '.join(map(str, datasets)) or 'unknown'})",
                         int(field_value("imatrix.chunk_size", 0) or 0), datasets=[str(d) for d in datasets])
