"""The torch float32 reference logits of a checkpoint, computed one decoder layer at a time.

The conversion-time logits gate compares a GGUF with the reference backend's model
(transformers' Llama modules in float32).  Loading that model whole needs ~4 bytes per
parameter (32 GB for UserLM-8b), more than a laptop has.  Here the same modules run
layer by layer: the check conversations' hidden states go through one
``LlamaDecoderLayer`` whose weights are read from the memory-mapped safetensors, then the
next layer's weights are loaded into it, and so on; the embedding rows of the ids and the
output matrix (in row blocks) are read the same way.  Peak memory is about three copies of
one layer in float32 (~2.6 GB for 8B), whatever the model's size.

Several *modes* share the pass over the weights: ``"F32"`` (the weights as they are) and
``"F16"`` / ``"BF16"``, which emulate llama.cpp's arithmetic on such a file: every matrix
rounded to that type, every matmul input rounded too (ggml converts activations to the
weight's type), norms and the rest in float32.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from .source import Source

LM_HEAD_BLOCK_BYTES = 256 << 20  # float32 rows of the output matrix per block
MODES = ("F32", "F16", "BF16")


def memory_needed(source: Source) -> int:
    """Bytes the layer-by-layer reference needs: three float32 copies of the largest layer,
    one output-matrix block (and its rounded copy) and a working margin."""
    layer = max((_layer_params(source, i) for i in range(source.params.n_layer)), default=0)
    return layer * 4 * 3 + 2 * LM_HEAD_BLOCK_BYTES + (512 << 20)


def _layer_params(source: Source, i: int) -> int:
    prefix = f"model.layers.{i}."
    return sum(int(np.prod(r.shape, dtype=np.int64)) for n, r in source.ckpt.tensors.items() if n.startswith(prefix))


def reference_logits(source: Source, convs: list[list[int]], modes: list[str], *, threads: int | None = None,
                     progress: bool = False) -> dict[str, list[np.ndarray]]:
    """``{mode: [float32 logits [len(ids), vocab] for ids in convs]}`` for every mode asked for."""
    import torch

    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown reference modes {sorted(unknown)}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        with torch.inference_mode():
            return _run(torch, source, convs, list(dict.fromkeys(modes)), progress)
    finally:
        torch.set_num_threads(before)


def _run(torch, source: Source, convs: list[list[int]], modes: list[str], progress: bool):
    from transformers import LlamaConfig
    from transformers.masking_utils import create_causal_mask
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

    config = LlamaConfig.from_pretrained(str(source.path), local_files_only=True)
    config._attn_implementation = "sdpa"  # what the torch backend's from_pretrained picks on CPU
    low = {"F32": None, "F16": torch.float16, "BF16": torch.bfloat16}
    current: dict = {"dtype": None}

    def round_input(module, args):
        return (_rounded(torch, args[0], current["dtype"]),) + tuple(args[1:])

    with torch.device("meta"):
        layer = LlamaDecoderLayer(config, layer_idx=0)
    layer = layer.to_empty(device="cpu").eval()
    for m in layer.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_pre_hook(round_input)
    rotary = LlamaRotaryEmbedding(config)
    norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps).eval()

    ckpt = source.ckpt
    embed = ckpt.tensors["model.embed_tokens.weight"]
    hidden: dict[str, list] = {}
    rows = [ckpt.to_f32(embed, np.asarray(ckpt.raw(embed))[ids]) for ids in convs]
    for mode in modes:
        hidden[mode] = [_rounded(torch, torch.from_numpy(r.copy()), low[mode])[None] for r in rows]
    positions = [torch.arange(len(ids))[None] for ids in convs]
    rope = [rotary(hidden[modes[0]][c], position_ids=positions[c]) for c in range(len(convs))]
    masks = [create_causal_mask(config=config, inputs_embeds=hidden[modes[0]][c], attention_mask=None,
                                cache=None, position_ids=positions[c]) for c in range(len(convs))]

    for i in _layers(config.num_hidden_layers, progress):
        weights = _layer_state(ckpt, i, layer.state_dict().keys())
        for mode in modes:
            layer.load_state_dict({k: _rounded(torch, w, low[mode]) if w.ndim == 2 else w
                                   for k, w in weights.items()})
            current["dtype"] = low[mode]
            hidden[mode] = [layer(h, attention_mask=masks[c], position_ids=positions[c],
                                  position_embeddings=rope[c])
                            for c, h in enumerate(hidden[mode])]
        del weights
    current["dtype"] = None

    norm.load_state_dict({"weight": torch.from_numpy(ckpt.load_f32(ckpt.tensors["model.norm.weight"]))})
    head = ckpt.tensors.get("lm_head.weight", embed)
    out: dict[str, list[np.ndarray]] = {}
    for mode in modes:
        normed = [_rounded(torch, norm(h)[0], low[mode]) for h in hidden[mode]]
        out[mode] = [np.empty((len(ids), head.shape[0]), dtype=np.float32) for ids in convs]
        for start, block in _row_blocks(ckpt, head):
            w = _rounded(torch, torch.from_numpy(block), low[mode])
            for c, h in enumerate(normed):
                out[mode][c][:, start:start + w.shape[0]] = torch.nn.functional.linear(h, w).numpy()
    return out


def _rounded(torch, x, dtype):
    return x if dtype is None else x.to(dtype).to(torch.float32)


def _layer_state(ckpt, i: int, keys) -> dict:
    import torch

    state = {}
    for key in keys:
        name = f"model.layers.{i}.{key}"
        if name not in ckpt.tensors:
            raise KeyError(f"{name} is missing from the checkpoint")
        state[key] = torch.from_numpy(ckpt.load_f32(ckpt.tensors[name]))
    return state


def _row_blocks(ckpt, ref) -> Iterator[tuple[int, np.ndarray]]:
    row_bytes = int(np.prod(ref.shape[1:], dtype=np.int64)) * 4
    for start, raw in ckpt.row_chunks(ref, max(1, LM_HEAD_BLOCK_BYTES // row_bytes)):
        yield start, ckpt.to_f32(ref, raw)


def _layers(n: int, progress: bool) -> Iterator[int]:
    if not progress:
        yield from range(n)
        return
    from tqdm import tqdm

    yield from tqdm(range(n), desc="reference logits (torch float32, layer by layer)", unit="layer",
                    leave=False, disable=None)
