"""A checkpoint's decoder run one layer at a time, from the memory-mapped weights (torch).

Loading a Llama whole needs 4 bytes per parameter in float32 (32 GB for UserLM-8b), more
than a laptop has.  Here the same transformers modules the torch backend uses run layer by
layer: every conversation's hidden states go through one ``LlamaDecoderLayer`` whose
weights are read from the safetensors, then the next layer's weights are loaded into it,
and so on; the embedding rows of the ids and the output matrix (in row blocks) are read
the same way.  Peak memory is about three copies of one layer (~2.6 GB for 8B in float32)
plus the hidden states, whatever the model's size.  On the test model the logits are
bit-equal to the torch backend's.

Two users: the conversion-time logits reference (``reference_logits``) and the importance
matrix (``imatrix.compute_imatrix``, through ``run_layers``'s ``on_linear`` callback).

Several *modes* share one pass over the weights: ``"F32"`` (the weights as they are) and
``"F16"`` / ``"BF16"``, which emulate llama.cpp's arithmetic on such a file: every matrix
rounded to that type, every matmul input rounded too (ggml converts activations to the
weight's type), norms and the rest in float32.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import numpy as np

from .source import Source

LM_HEAD_BLOCK_BYTES = 256 << 20  # float32 rows of the output matrix per block
MODES = ("F32", "F16", "BF16")
LM_HEAD = "lm_head.weight"  # the name under which ``on_linear`` sees the output matrix's input


def memory_needed(source: Source) -> int:
    """Bytes the reference logits need: three float32 copies of the largest layer, one
    output-matrix block (and its rounded copy) and a working margin."""
    layer = max((_layer_params(source, i) for i in range(source.params.n_layer)), default=0)
    return layer * 4 * 3 + 2 * LM_HEAD_BLOCK_BYTES + (512 << 20)


def _layer_params(source: Source, i: int) -> int:
    prefix = f"model.layers.{i}."
    return sum(int(np.prod(r.shape, dtype=np.int64)) for n, r in source.ckpt.tensors.items() if n.startswith(prefix))


@contextlib.contextmanager
def torch_threads(threads: int | None):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def reference_logits(source: Source, convs: list[list[int]], modes: list[str], *, threads: int | None = None,
                     progress: bool = False) -> dict[str, list[np.ndarray]]:
    """``{mode: [float32 logits [len(ids), vocab] for ids in convs]}`` for every mode asked for."""
    import torch

    modes = list(dict.fromkeys(modes))
    with torch_threads(threads), torch.inference_mode():
        normed = run_layers(source, convs, modes, progress=progress,
                            desc="reference logits (torch float32, layer by layer)")
        ckpt = source.ckpt
        head = ckpt.tensors.get(LM_HEAD, ckpt.tensors["model.embed_tokens.weight"])
        hs = {mode: [_rounded(h[0], _low(mode)) for h in normed[mode]] for mode in modes}
        out = {mode: [np.empty((len(ids), head.shape[0]), dtype=np.float32) for ids in convs] for mode in modes}
        for start, block in _row_blocks(ckpt, head):  # each block read once, for every mode
            for mode in modes:
                w = _rounded(torch.from_numpy(block), _low(mode))
                for c, h in enumerate(hs[mode]):
                    out[mode][c][:, start:start + w.shape[0]] = torch.nn.functional.linear(h, w).numpy()
    return out


def run_layers(source: Source, convs: list[list[int]], modes: list[str], *, dtype: str = "float32",
               on_linear: Callable[[str, object], None] | None = None, progress: bool = False,
               desc: str = "layers") -> dict[str, list]:
    """The final-norm hidden states (``[1, len(ids), hidden]`` tensors) of every conversation in
    every mode.  ``on_linear(hf_weight_name, x)`` sees the input of every linear layer, the output
    matrix's included (as ``LM_HEAD``), in the order the model computes them.  Call it under
    ``torch.inference_mode()``."""
    import torch
    from transformers import LlamaConfig
    from transformers.masking_utils import create_causal_mask
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}")
    compute = getattr(torch, dtype)
    if compute != torch.float32 and modes != ["F32"]:
        raise ValueError("rounding emulation needs float32 compute")
    config = LlamaConfig.from_pretrained(str(source.path), local_files_only=True)
    config._attn_implementation = "sdpa"  # what the torch backend's from_pretrained picks on CPU
    with torch.device("meta"):
        layer = LlamaDecoderLayer(config, layer_idx=0)
    layer = layer.to_empty(device="cpu").to(compute).eval()
    state = {"low": None, "layer": 0}
    linear_names = {m: n for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}

    def before_linear(module, args):
        x = _rounded(args[0], state["low"])
        if on_linear is not None:
            on_linear(f"model.layers.{state['layer']}.{linear_names[module]}.weight", x)
        return (x,) + tuple(args[1:])

    for m in linear_names:
        m.register_forward_pre_hook(before_linear)
    rotary = LlamaRotaryEmbedding(config)
    norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps).eval()

    ckpt = source.ckpt
    embed = ckpt.tensors["model.embed_tokens.weight"]
    table = np.asarray(ckpt.raw(embed))
    hidden = {mode: [] for mode in modes}
    for ids in convs:
        rows = torch.from_numpy(ckpt.to_f32(embed, table[ids]))
        for mode in modes:
            hidden[mode].append(_rounded(rows, _low(mode)).to(compute)[None])
    del table
    positions = [torch.arange(len(ids))[None] for ids in convs]
    first = hidden[modes[0]]
    rope = [tuple(t.to(compute) for t in rotary(first[c], position_ids=positions[c])) for c in range(len(convs))]
    masks = [create_causal_mask(config=config, inputs_embeds=first[c], attention_mask=None, cache=None,
                                position_ids=positions[c]) for c in range(len(convs))]

    for i in _progress(config.num_hidden_layers, progress, desc):
        weights = _layer_weights(ckpt, i, layer.state_dict().keys())
        state["layer"] = i
        for mode in modes:
            low = _low(mode)
            layer.load_state_dict({k: _rounded(w, low) if w.ndim == 2 else w for k, w in weights.items()})
            state["low"] = low
            hidden[mode] = [layer(h, attention_mask=masks[c], position_ids=positions[c],
                                  position_embeddings=rope[c]) for c, h in enumerate(hidden[mode])]
        del weights
    state["low"] = None

    norm.load_state_dict({"weight": torch.from_numpy(ckpt.load_f32(ckpt.tensors["model.norm.weight"]))})
    norm.to(compute)
    out = {mode: [norm(h) for h in hidden[mode]] for mode in modes}
    if on_linear is not None:
        for h in out[modes[0]]:
            on_linear(LM_HEAD, h)
    return out


def _low(mode: str):
    """The type a mode rounds matrices and matmul inputs to (None: no rounding)."""
    import torch

    return {"F32": None, "F16": torch.float16, "BF16": torch.bfloat16}[mode]


def _rounded(x, dtype):
    return x if dtype is None else x.to(dtype).to(x.dtype)


def _layer_weights(ckpt, i: int, keys) -> dict:
    import torch

    return {key: torch.from_numpy(ckpt.load_f32(ckpt.tensors[f"model.layers.{i}.{key}"])) for key in keys}


def _row_blocks(ckpt, ref) -> Iterator[tuple[int, np.ndarray]]:
    row_bytes = int(np.prod(ref.shape[1:], dtype=np.int64)) * 4
    for start, raw in ckpt.row_chunks(ref, max(1, LM_HEAD_BLOCK_BYTES // row_bytes)):
        yield start, ckpt.to_f32(ref, raw)


def _progress(n: int, progress: bool, desc: str) -> Iterator[int]:
    if not progress:
        yield from range(n)
        return
    from tqdm import tqdm

    yield from tqdm(range(n), desc=desc, unit="layer", leave=False, disable=None)
