"""Importance matrix computed by us: mean of squared inputs per input column of every
linear layer, keyed by GGUF tensor name.

llama.cpp's ``llama-imatrix`` is a CLI that the Python wheel does not ship, so we run the
Hugging Face model (torch, imported lazily) over calibration conversations with forward
pre-hooks on every ``nn.Linear``.  For a weight ``W`` of shape ``[out, in]`` the entry is
``mean over tokens of x[:, j]**2`` for ``j < in``: exactly what ``llama-quantize`` derives
from an imatrix file (``in_sum2 / counts``).  The Q/K row permutation of the GGUF does not
touch input columns, so HF columns are GGUF columns.

The result can be saved in llama.cpp's GGUF imatrix format (``<name>.in_sum2`` and
``<name>.counts`` tensors, ``general.type = imatrix``), which ``llama-quantize --imatrix``
also reads, and loaded back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from .llama_arch import gguf_name


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

    def means(self) -> dict[str, np.ndarray]:
        """What the quantizer wants: mean of x² per column (float32)."""
        return {k: (v / max(1, self.counts[k])).astype(np.float32) for k, v in self.sums.items()}

    def describe(self) -> dict:
        return {"conversations": self.conversations, "tokens": self.tokens, "calibration": self.origin,
                "tensors": len(self.sums), "max_tokens_per_conversation": self.chunk_size,
                "seconds": round(self.seconds, 2), **self.extra}


def compute_imatrix(src: Path, conversations: list[list[int]], *, origin: str, dtype: str = "float32",
                    chunk_size: int = 512, allow_non_userlm: bool = False, threads: int | None = None,
                    progress: bool = True) -> ImatrixResult:
    """Run the HF model over ``conversations`` (token ids) and collect mean x² per linear input."""
    try:
        import torch
    except ImportError:
        raise UserError("computing an importance matrix needs torch: pip install 'userlm-local[torch]'") from None
    from ..backends import torch as torch_backend

    t0 = time.perf_counter()
    backend = torch_backend.load(src, dtype=dtype, allow_non_userlm=allow_non_userlm, threads=threads)
    model = backend.model
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook_for(name: str):
        def hook(module, args):
            x = args[0].detach()
            x = x.reshape(-1, x.shape[-1]).to(torch.float64)
            s = (x * x).sum(dim=0)
            if name in sums:
                sums[name] += s
            else:
                sums[name] = s
            counts[name] = counts.get(name, 0) + x.shape[0]
        return hook

    for mod_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            name = gguf_name(mod_name + ".weight")
            if name is not None:
                hooks.append(module.register_forward_pre_hook(hook_for(name)))
    if not hooks:
        raise UserError(f"{src}: no linear layers found to calibrate")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(conversations), unit="conv", desc="imatrix", leave=False, disable=None)
    tokens = 0
    try:
        with torch.inference_mode():
            for ids in conversations:
                ids = ids[:chunk_size]
                model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
                tokens += len(ids)
                if bar is not None:
                    bar.update(1)
    finally:
        for h in hooks:
            h.remove()
        if bar is not None:
            bar.close()
    del backend, model
    out = {k: v.numpy() for k, v in sums.items()}
    for k, v in out.items():
        if not np.isfinite(v).all():
            raise UserError(f"the importance matrix of {k} has non-finite values (overflow in {dtype}?)")
    return ImatrixResult(out, counts, len(conversations), tokens, origin, chunk_size,
                         time.perf_counter() - t0, {"dtype": dtype})


def save_imatrix(result: ImatrixResult, path: Path) -> None:
    """Write llama.cpp's GGUF imatrix format (``llama-quantize --imatrix`` reads it)."""
    import gguf

    w = gguf.GGUFWriter(path=None, arch="imatrix")
    for kv in w.kv_data:  # llama-imatrix writes no architecture
        kv.pop("general.architecture", None)
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", [result.origin])
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
    try:
        import gguf
    except ImportError:
        raise UserError("reading an imatrix file needs the 'gguf' package") from None
    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a GGUF imatrix file ({exc})") from None
    data = {t.name: np.asarray(t.data, dtype=np.float32) for t in reader.tensors}
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
        f = reader.fields.get(key)
        if f is None:
            return default
        try:
            return f.contents()
        except Exception:  # older gguf versions
            return default

    chunks = field_value("imatrix.chunk_count", 0) or 0
    datasets = field_value("imatrix.datasets", []) or []
    return ImatrixResult(sums, counts, int(chunks), int(max(counts.values())),
                         f"file {path.name} (datasets: {', '.join(map(str, datasets)) or 'unknown'})",
                         int(field_value("imatrix.chunk_size", 0) or 0))
