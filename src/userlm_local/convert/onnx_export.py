"""``write_onnx``: a checked ``Source`` -> one ONNX Runtime GenAI model directory, streamed.

The graph is the one onnxruntime-genai's model builder writes for Llama on the CPU and CUDA
(``GroupQueryAttention`` with the rotary embedding inside, a fused QKV projection,
``(Skip)SimplifiedLayerNormalization``, ``MatMulNBits`` for int8/int4), so ``genai_config.json``
describes it the same way and the runtime's past/present buffer sharing applies.  What differs
is how it is written: tensor by tensor from the memory-mapped safetensors into
``model.onnx.data`` (``OnnxWriter``), quantized matrices in row chunks, never the whole model
in memory (the builder loads it into torch and builds the whole proto first).

Types: fp32 and fp16 (everything in that type, the KV cache too), int8 and int4 (matrices
blockwise in ``MatMulNBits``, block 32, symmetric, ``accuracy_level`` 4 as the builder's CPU
default; norms, activations and the KV cache in float32), and int4_mixed (asymmetric 4-bit blocks
with zero points, the fused QKV, ``down_proj`` and ``lm_head`` in 8 bits).  The embedding table is fp32/fp16 for
those types and fp16 for int8/int4 (a row is read per token, so its size costs memory, not
time), except for tied int4 embeddings: then the 4-bit blocks of ``lm_head`` are read by
``GatherBlockQuantized``, as the builder does.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..util.errors import UserError
from .llama_arch import llama3_rope_factors
from .onnx_quant import BLOCK, OnnxQuant, blocks_of, quantize_rows, quantize_rows_asym
from .onnx_writer import OnnxWriter
from ..artifacts.safetensors import TensorRef
from .source import Source

CHUNK_ELEMS = 4 << 20  # values per row chunk of a quantized matrix (16 MiB as float32)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")
GENAI_CONFIG = "genai_config.json"
OPSETS = {"": 21, "com.microsoft": 1}


def check_exportable(source: Source) -> None:
    p = source.params
    if p.rope_type not in ("default", "llama3"):
        raise UserError(f"{source.path}: rope type {p.rope_type!r} is not supported by the ONNX export "
                        "(default and llama3 are)")
    if p.attention_bias:
        raise UserError(f"{source.path}: attention biases are not supported by the ONNX export")
    if p.head_dim % 2:
        raise UserError(f"{source.path}: head_dim {p.head_dim} is odd")


def rope_caches(source: Source, dtype) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [context_length, head_dim/2] of the rotary embedding (llama3 scaling applied)."""
    p = source.params
    base = float(p.rope.get("theta", 10000.0))
    inv = (1.0 / (base ** (np.arange(0, p.head_dim, 2, dtype=np.int64).astype(np.float32) / p.head_dim))).astype(np.float32)
    if p.rope_type == "llama3":
        inv = (inv / llama3_rope_factors(p)).astype(np.float32)
    angles = np.arange(p.context_length, dtype=np.float32)[:, None] * inv[None, :]
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


class Graph:
    """Nodes and value names, built as the layers are written."""

    def __init__(self, onnx):
        self.onnx, self.nodes = onnx, []

    def node(self, op: str, inputs: list[str], name: str, n_out: int = 1, domain: str = "", outputs=None, **attrs):
        outputs = outputs or [f"{name}/output_{i}" for i in range(n_out)]
        self.nodes.append(self.onnx.helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs[0] if len(outputs) == 1 else outputs


@dataclass
class Matrix:
    """A written projection: its initializers (the weight, or the blocks and their scales), K, N, bits."""

    names: list[str]
    k: int
    n: int
    bits: int | None


class Exporter:
    """One artifact: ``run`` writes every tensor and the graph through one ``OnnxWriter``."""

    def __init__(self, source: Source, directory: Path, q: OnnxQuant, progress=None, *, accuracy_level: int = 4):
        check_exportable(source)
        self.source, self.dir, self.q = source, Path(directory), q
        self.head_bits = q.bits if q.head_bits is None else q.head_bits
        self.accuracy_level = accuracy_level
        self.symmetric = q.symmetric
        self.wider = dict(q.wider)  # {"qkv" | "down": bits} for those projections
        self.p = source.params
        self.fdtype = np.dtype(q.float_dtype)
        self.writer = OnnxWriter(self.dir)
        self.g = Graph(self.writer.onnx)
        self.tick = progress or (lambda n: None)

    def ref(self, hf_name: str) -> TensorRef:
        return self.source.ckpt.tensors[hf_name]

    def load(self, hf_name: str) -> np.ndarray:
        return self.source.ckpt.load_f32(self.ref(hf_name))

    def rows(self, refs: list[TensorRef]) -> Iterator[np.ndarray]:
        """float32 row chunks of one or more [N, K] matrices stacked along N."""
        for ref in refs:
            per = max(1, CHUNK_ELEMS // max(1, ref.shape[1]))
            for _, raw in self.source.ckpt.row_chunks(ref, per):
                yield self.source.ckpt.to_f32(ref, raw)
                self.tick(raw.size)

    def matrix(self, name: str, hf_names: list[str], bits: int | None = None) -> Matrix:
        """Write a projection (several stacked along N: the fused QKV) in ``bits`` (default: the type's)."""
        bits = self.q.bits if bits is None else bits
        refs = [self.ref(n) for n in hf_names]
        k = refs[0].shape[1]
        n = sum(r.shape[0] for r in refs)
        if bits is None:
            w = np.concatenate([self.source.ckpt.load_f32(r) for r in refs]) if len(refs) > 1 \
                else self.load(hf_names[0])
            self.tick(w.size)
            self.writer.tensor(f"{name}.weight", np.ascontiguousarray(w.T).astype(self.fdtype))
            return Matrix([f"{name}.weight"], k, n, None)
        nb = blocks_of(k)
        scales, zps = [], []
        qname = f"{name}.weight_Q{bits}"
        with self.writer.stream(qname, np.uint8, (n, nb, BLOCK * bits // 8)) as put:
            for chunk in self.rows(refs):
                if self.symmetric:
                    packed, s = quantize_rows(chunk, bits)
                else:
                    packed, s, z = quantize_rows_asym(chunk, bits)
                    zps.append(z)
                put(packed)
                scales.append(s)
        names = [qname, self.writer.tensor(f"{name}.weight_scales", np.concatenate(scales)).name]
        if zps:
            names.append(self.writer.tensor(f"{name}.weight_zp", np.concatenate(zps)).name)
        return Matrix(names, k, n, bits)

    def matmul(self, x: str, w: Matrix, node: str, outputs=None) -> str:
        if w.bits is None:
            return self.g.node("MatMul", [x, *w.names], node, outputs=outputs)
        return self.g.node("MatMulNBits", [x, *w.names], node, domain="com.microsoft", outputs=outputs,
                           K=w.k, N=w.n, bits=w.bits, block_size=BLOCK, accuracy_level=self.accuracy_level)

    def norm(self, hf_name: str) -> str:
        """A norm's weight, under its checkpoint name."""
        self.writer.tensor(hf_name, self.load(hf_name).astype(self.fdtype))
        return hf_name

    def embedding(self) -> tuple[str, object | None]:
        """The token embedding output, and the lm_head weights when they were written with it (tied int4)."""
        g, p = self.g, self.p
        if self.head_bits == 4 and p.tied_embeddings:
            lm = self.matrix("lm_head.MatMul", ["model.embed_tokens.weight"], bits=4)
            shape = self.writer.inline("embed_tokens.shape", np.array([p.vocab_size, p.hidden // 2], np.int64))
            data = g.node("Reshape", [lm.names[0], shape.name], "/model/embed_tokens/Reshape")
            out = g.node("GatherBlockQuantized", [data, "input_ids", *lm.names[1:]],
                         "/model/embed_tokens/GatherBlockQuantized",
                         domain="com.microsoft", bits=4, block_size=BLOCK, gather_axis=0, quantize_axis=1)
            return out, lm
        table = np.float16 if self.q.bits else self.fdtype
        ref = self.ref("model.embed_tokens.weight")
        with self.writer.stream("model.embed_tokens.weight", table, tuple(ref.shape)) as put:
            for chunk in self.rows([ref]):
                put(chunk.astype(table))
        out = g.node("Gather", ["model.embed_tokens.weight", "input_ids"], "/model/embed_tokens/Gather")
        if np.dtype(table) != self.fdtype:
            out = g.node("Cast", [out], "/model/embed_tokens/Cast", to=self.onnx_type(self.fdtype))
        return out, None

    def onnx_type(self, dtype) -> int:
        return self.writer.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))

    def mask_inputs(self) -> tuple[str, str]:
        """seqlens_k (the mask's sum minus one) and total_sequence_length, as GroupQueryAttention wants them."""
        g = self.g
        one = self.writer.inline("const_int64_1", np.array([1], np.int64)).name
        idx = self.writer.inline("const_int64_scalar_1", np.array(1, np.int64)).name
        total = g.node("ReduceSum", ["attention_mask", one], "/model/attn_mask/ReduceSum", keepdims=0)
        seqlens = g.node("Cast", [g.node("Sub", [total, one], "/model/attn_mask/Sub")], "/model/attn_mask/Sub/Cast", to=6)
        width = g.node("Gather", [g.node("Shape", ["attention_mask"], "/model/attn_mask/Shape"), idx],
                       "/model/attn_mask/Gather", axis=0)
        return seqlens, g.node("Cast", [width], "/model/attn_mask/Gather/Cast", to=6)

    def run(self) -> None:
        g, p = self.g, self.p
        cos, sin = rope_caches(self.source, self.fdtype)
        self.writer.tensor("cos_cache", cos)
        self.writer.tensor("sin_cache", sin)
        seqlens, total = self.mask_inputs()
        hidden, lm = self.embedding()
        residual, down = hidden, None
        eps = float(p.rms_eps)
        for i in range(p.n_layer):
            hf, pre = f"model.layers.{i}.", f"/model/layers.{i}"
            w_in = self.norm(f"{hf}input_layernorm.weight")
            if down is None:
                h = g.node("SimplifiedLayerNormalization", [residual, w_in], f"{pre}/input_layernorm/LayerNorm",
                           epsilon=eps, axis=-1, stash_type=1)
            else:
                h, _, _, residual = g.node("SkipSimplifiedLayerNormalization", [residual, down, w_in],
                                           f"{pre}/input_layernorm/SkipLayerNorm", domain="com.microsoft",
                                           outputs=[f"{pre}/input_layernorm/output_{j}" if j in (0, 3) else ""
                                                    for j in range(4)], epsilon=eps)
            qkv = self.matrix(f"{hf}attn.qkv_proj.MatMul", [f"{hf}self_attn.{x}_proj.weight" for x in "qkv"],
                              bits=self.wider.get("qkv"))
            x = self.matmul(h, qkv, f"{pre}/attn/qkv_proj/MatMul")
            attn = g.node("GroupQueryAttention",
                          [x, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens, total,
                           "cos_cache", "sin_cache"], f"{pre}/attn/GroupQueryAttention", domain="com.microsoft",
                          outputs=[f"{pre}/attn/GroupQueryAttention/output_0", f"present.{i}.key", f"present.{i}.value"],
                          num_heads=p.n_head, kv_num_heads=p.n_kv_head, scale=float(p.head_dim ** -0.5),
                          local_window_size=-1, do_rotary=1, rotary_interleaved=0)[0]
            o = self.matmul(attn, self.matrix(f"{hf}attn.o_proj.MatMul", [f"{hf}self_attn.o_proj.weight"]),
                            f"{pre}/attn/o_proj/MatMul")
            w_post = self.norm(f"{hf}post_attention_layernorm.weight")
            h, _, _, residual = g.node("SkipSimplifiedLayerNormalization", [residual, o, w_post],
                                       f"{pre}/post_attention_layernorm/SkipLayerNorm", domain="com.microsoft",
                                       outputs=[f"{pre}/post_attention_layernorm/output_{j}" if j in (0, 3) else ""
                                                for j in range(4)], epsilon=eps)
            gate = self.matmul(h, self.matrix(f"{hf}mlp.gate_proj.MatMul", [f"{hf}mlp.gate_proj.weight"]),
                               f"{pre}/mlp/gate_proj/MatMul")
            up = self.matmul(h, self.matrix(f"{hf}mlp.up_proj.MatMul", [f"{hf}mlp.up_proj.weight"]),
                             f"{pre}/mlp/up_proj/MatMul")
            act = g.node("Mul", [gate, g.node("Sigmoid", [gate], f"{pre}/mlp/act_fn/Sigmoid")], f"{pre}/mlp/act_fn/Mul")
            down = self.matmul(g.node("Mul", [act, up], f"{pre}/mlp/Mul"),
                               self.matrix(f"{hf}mlp.down_proj.MatMul", [f"{hf}mlp.down_proj.weight"],
                                           bits=self.wider.get("down")),
                               f"{pre}/mlp/down_proj/MatMul")
        w_norm = self.norm("model.norm.weight")
        final = g.node("SkipSimplifiedLayerNormalization", [residual, down, w_norm], "/model/norm/SkipLayerNorm",
                       domain="com.microsoft", outputs=["/model/norm/output_0", "", "", ""], epsilon=eps)[0]
        if lm is None:
            lm = self.matrix("lm_head.MatMul", ["model.embed_tokens.weight" if p.tied_embeddings else "lm_head.weight"],
                             bits=self.head_bits)
        self.matmul(final, lm, "/lm_head/MatMul", outputs=["logits"])
        self.writer.finish(self.g.nodes, *self.io(), OPSETS)

    def io(self):
        helper, p = self.writer.onnx.helper, self.p
        ft = self.onnx_type(self.fdtype)
        kv = ["batch_size", p.n_kv_head, "past_sequence_length", p.head_dim]
        present = ["batch_size", p.n_kv_head, "total_sequence_length", p.head_dim]
        inputs = [helper.make_tensor_value_info("input_ids", 7, ["batch_size", "sequence_length"]),
                  helper.make_tensor_value_info("attention_mask", 7, ["batch_size", "total_sequence_length"])]
        inputs += [helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", ft, kv)
                   for kind in ("key", "value") for i in range(p.n_layer)]
        outputs = [helper.make_tensor_value_info("logits", ft, ["batch_size", "sequence_length", p.vocab_size])]
        outputs += [helper.make_tensor_value_info(f"present.{i}.{kind}", ft, present)
                    for kind in ("key", "value") for i in range(p.n_layer)]
        return inputs, outputs


def genai_config(source: Source) -> dict:
    p, tok = source.params, source.tokenizer.facts
    stops = [i for i in (tok.get("eot"), tok.get("end_of_text")) if i is not None]
    gen = source.sampling()
    return {
        "model": {
            "bos_token_id": tok.get("bos"),
            "context_length": p.context_length,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx",
                "head_size": p.head_dim,
                "hidden_size": p.hidden,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": p.n_head,
                "num_hidden_layers": p.n_layer,
                "num_key_value_heads": p.n_kv_head,
            },
            "eos_token_id": stops if len(stops) > 1 else stops[0],
            "pad_token_id": stops[0],
            "type": "llama",
            "vocab_size": p.vocab_size,
        },
        "search": {
            "do_sample": True, "num_beams": 1, "num_return_sequences": 1, "min_length": 0,
            "max_length": p.context_length, "past_present_share_buffer": True,
            "temperature": float(gen.get("temperature", 1.0)), "top_p": float(gen.get("top_p", 1.0)),
            "top_k": int(gen.get("top_k", 0) or 0), "repetition_penalty": 1.0,
        },
    }


def write_onnx(source: Source, directory: Path, q: OnnxQuant, progress=None, **options) -> list[str]:
    """Write the model, ``genai_config.json`` and the tokenizer files into ``directory`` (which
    exists and is empty); return the file names written.  ``options``: ``Exporter``'s."""
    exporter = Exporter(source, directory, q, progress, **options)
    try:
        exporter.run()
    except BaseException:
        exporter.writer.abort()
        raise
    (directory / GENAI_CONFIG).write_text(json.dumps(genai_config(source), indent=4) + "\n", encoding="utf-8")
    for name in TOKENIZER_FILES:
        if (source.path / name).is_file():
            shutil.copyfile(source.path / name, directory / name)
    return sorted(f.name for f in directory.iterdir())
