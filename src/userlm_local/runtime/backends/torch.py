"""Reference backend: a Hugging Face Llama checkpoint on PyTorch (fp32 or bf16).

Loads safetensors only (pickled ``.bin`` needs ``allow_pickle=True``) and never
runs remote code.  Each session owns a ``DynamicCache`` that persists across
turns; ``trim`` cuts it back.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...text.prompt_format import USERLM_TEMPLATE, ChatFormat, chat_format, template_sha256
from ...util.errors import UserError
from ...artifacts.model_files import (ModelInfo, bound_llama_config, check_config_matches_weights,
                                         check_llama_config, rope_facts, weight_files)
from ...text.tokenizer import Tokenizer, read_json
from .base import BackendBase, SessionBookkeeping, Usage

DTYPES = ("float32", "bfloat16")


class TorchSession(SessionBookkeeping):
    def __init__(self, backend: "TorchBackend", cache=None, tokens: list[int] | None = None):
        self.backend = backend
        self.cache = cache
        self.tokens: list[int] = list(tokens or [])
        self.usage = Usage()
        self.context_length = backend.context_length

    def extend(self, ids: list[int]) -> np.ndarray:
        self.check_extend(ids)
        torch = self.backend.torch
        if self.cache is None:
            from transformers import DynamicCache

            self.cache = DynamicCache(config=self.backend.model.config)
        with torch.inference_mode():
            out = self.backend.model(
                input_ids=torch.tensor([ids], dtype=torch.long, device=self.backend.device),
                cache=self.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        self.record_extend(ids)
        return self.backend.out(out.logits[0, -1])

    def trim(self, n: int) -> int:
        keep = self.check_trim(n)
        if n:
            for layer in self.cache.layers:
                layer.keys = layer.keys[..., :keep, :]
                layer.values = layer.values[..., :keep, :]
            del self.tokens[keep:]
        return len(self.tokens)

    def close(self) -> None:
        self.cache = None
        self.tokens = []


class TorchBackend(BackendBase):
    name = "torch"

    def __init__(self, path: str, model, tokenizer: Tokenizer, fmt: ChatFormat, info: ModelInfo,
                 device: str = "cpu", batched: bool | None = None):
        import torch

        self.torch = torch
        self.path = path
        self.model = model
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.info = info
        self.context_length = info.context_length
        self.device = torch.device(device)
        # Decode steps of several sessions in one forward pass: on a GPU, where a batch costs
        # about what one row does; on the CPU each session decodes alone, which keeps a
        # conversation's transcript bit-identical whatever runs beside it.
        self.batched = self.device.type != "cpu" if batched is None else batched

    def out(self, logits):
        """Logits as the decode loop takes them: numpy on the CPU, a float32 tensor left on the
        device elsewhere (the sampler then runs there)."""
        return logits.float().numpy() if self.device.type == "cpu" else logits.float()

    def new_session(self) -> TorchSession:
        return TorchSession(self)

    def describe(self) -> dict:
        return {"format": "hf", "quant": str(next(self.model.parameters()).dtype).replace("torch.", "")}

    def extend_many(self, work: list[tuple[TorchSession, list[int]]]) -> list:
        """Several sessions' new ids; the single-token steps of two or more sessions share one
        forward pass when ``batched``, the rest run one session at a time."""
        single = [i for i, (s, ids) in enumerate(work) if len(ids) == 1 and s.cache is not None and s.tokens]
        out: list = [None] * len(work)
        if self.batched and len(single) > 1:
            for i, logits in zip(single, self._decode_batch([work[i] for i in single])):
                out[i] = logits
        for i, (s, ids) in enumerate(work):
            if out[i] is None:
                out[i] = s.extend(ids)
        return out

    def _decode_batch(self, work: list[tuple[TorchSession, list[int]]]) -> list:
        """One token for each session in one forward pass: the sessions' caches left-padded to
        the longest, an attention mask over the padding, each row at its own position; each
        session then keeps its own row of the grown cache."""
        from transformers import DynamicCache

        torch = self.torch
        lens = [len(s.tokens) for s, _ in work]
        top = max(lens)
        for s, ids in work:
            s.check_extend(ids)
        cache = DynamicCache(config=self.model.config)
        n_layers = len(work[0][0].cache.layers)
        pad = (lambda t, n: torch.nn.functional.pad(t, (0, 0, top - n, 0)))
        for li in range(n_layers):
            keys = torch.cat([pad(s.cache.layers[li].keys, n) for (s, _), n in zip(work, lens)])
            values = torch.cat([pad(s.cache.layers[li].values, n) for (s, _), n in zip(work, lens)])
            cache.update(keys, values, li)
        mask = torch.zeros(len(work), top + 1, dtype=torch.long, device=self.device)
        for row, n in enumerate(lens):
            mask[row, top - n:] = 1
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids for _, ids in work], dtype=torch.long, device=self.device),
                             attention_mask=mask, position_ids=torch.tensor([[n] for n in lens], device=self.device),
                             cache=cache, use_cache=True, logits_to_keep=1)
        for row, ((s, ids), n) in enumerate(zip(work, lens)):
            for li in range(n_layers):
                s.cache.layers[li].keys = cache.layers[li].keys[row:row + 1, :, top - n:].clone()
                s.cache.layers[li].values = cache.layers[li].values[row:row + 1, :, top - n:].clone()
            s.record_extend(ids)
        return [self.out(out.logits[row, -1]) for row in range(len(work))]

    def logits(self, ids: list[int], start: int = 0, positions: list[int] | None = None) -> np.ndarray:
        """Logits at every index of ``ids`` from ``start`` on, or at the sorted indices
        ``positions`` only, in one forward pass, no cache (float32, [n, vocab])."""
        torch = self.torch
        keep = len(ids) - start if positions is None else torch.tensor(positions, dtype=torch.long)
        if positions is not None:
            keep = keep.to(self.device)
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], dtype=torch.long, device=self.device), use_cache=False,
                             logits_to_keep=keep)
        return out.logits[0].float().cpu().numpy()

    def score(self, ids: list[int], start: int, extra: int | None = None):
        """Teacher-forced log P(ids[i] | ids[:i]) for i in [start, len(ids)); with ``extra``, also
        log P(extra | ids[:i]) at the same positions (a second array)."""
        if not 1 <= start <= len(ids):
            raise ValueError("score() needs 1 <= start <= len(ids)")
        torch = self.torch
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], dtype=torch.long, device=self.device), use_cache=False,
                             logits_to_keep=len(ids) - start + 1)
            logp = torch.log_softmax(out.logits[0, :-1].float(), dim=-1)
            target = torch.tensor(ids[start:], dtype=torch.long, device=self.device)
            lp = logp.gather(1, target[:, None])[:, 0].cpu().numpy()
            return lp if extra is None else (lp, logp[:, extra].cpu().numpy())


def inspect(path: str | Path, *, allow_non_userlm: bool = False, allow_pickle: bool = False) -> ModelInfo:
    """The facts of a Hugging Face checkpoint directory (config, generation config, tokenizer),
    without loading weights or torch."""
    p = Path(path)
    fmt = "hf"
    config = read_json(p / "config.json")
    archs = check_llama_config(config, path, "UserLM runtimes need LlamaForCausalLM")
    weights = weight_files(p, allow_pickle)
    bound_llama_config(config, path, [p / w for w in weights])  # a lying config is refused, not reported
    if weights[0].endswith(".safetensors"):
        check_config_matches_weights(config, path, [p / w for w in weights])
    tok = Tokenizer.from_dir(p)
    fmt_ = chat_format(tok, allow_non_userlm=allow_non_userlm)
    ids = fmt_.ids if fmt_ is not None else None
    gen = read_json(p / "generation_config.json", missing_ok=True) or {}
    eos = {
        "config": config.get("eos_token_id"),
        "generation_config": gen.get("eos_token_id"),
        "tokenizer": tok.token_id(tok.eos_token) if tok.eos_token else None,
    }
    warnings = []
    known = {k: v for k, v in eos.items() if v is not None}
    if len({str(v) for v in known.values()}) > 1:
        warnings.append(
            "EOS ids disagree (" + ", ".join(f"{k}={v}" for k, v in known.items())
            + (f"); generation stops on all of {sorted(ids.stop_ids)}" if ids else ")")
        )
    vocab = int(config.get("vocab_size", 0))
    if vocab < tok.vocab_size:
        raise UserError(f"{path}: config vocab_size {vocab} is smaller than the tokenizer ({tok.vocab_size})")
    template_hash = template_sha256(tok.chat_template)
    if tok.chat_template is None:
        warnings.append("no chat template in the checkpoint; the UserLM format is rendered by userlm-local")
    elif tok.chat_template.strip() != USERLM_TEMPLATE.strip():
        warnings.append("the checkpoint's chat template differs from UserLM-8b's; userlm-local renders the UserLM format itself")
    heads = int(config["num_attention_heads"])
    return ModelInfo(
        path=str(p),
        format=fmt,
        architecture=archs[0],
        hidden_size=int(config["hidden_size"]),
        num_layers=int(config["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(config.get("num_key_value_heads", heads)),
        intermediate_size=int(config["intermediate_size"]),
        vocab_size=vocab,
        tokenizer_size=tok.vocab_size,
        context_length=int(config.get("max_position_embeddings", 2048)),
        rope=rope_facts(config),
        dtype=config.get("dtype") or config.get("torch_dtype"),
        weights=weights,
        special=ids,
        is_userlm=ids is not None and ids.end_conversation is not None,
        template_sha256=template_hash,
        template_is_userlm=tok.chat_template is not None and tok.chat_template.strip() == USERLM_TEMPLATE.strip(),
        add_bos_token=tok.add_bos_token,
        eos=eos,
        warnings=warnings,
        sampling={k: gen[k] for k in ("temperature", "top_p", "top_k", "do_sample", "max_length") if k in gen},
    )


SMALL_MODEL_PARAMS = 100_000_000


def approx_params(info: ModelInfo) -> int:
    per_layer = 4 * info.hidden_size ** 2 + 3 * info.hidden_size * info.intermediate_size
    return info.num_layers * per_layer + 2 * info.vocab_size * info.hidden_size


def default_threads(info: ModelInfo) -> int:
    """One thread for small models: their per-token ops are too small to split, and several
    processes each spinning a multi-threaded OpenMP pool on a busy CPU made a 24-token reply of
    the bundled assistant take 9 s instead of 0.1 s here.  Larger models use every core."""
    return 1 if approx_params(info) < SMALL_MODEL_PARAMS else (os.cpu_count() or 1)


def load(path: str | Path, *, dtype: str = "float32", allow_pickle: bool = False,
         allow_non_userlm: bool = False, add_bos: bool = False, threads: int | None = None,
         device: str = "cpu", batched: bool | None = None) -> TorchBackend:
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r} for the torch backend (choose {' or '.join(DTYPES)})")
    info = inspect(path, allow_non_userlm=allow_non_userlm, allow_pickle=allow_pickle)
    try:
        import torch
        from transformers import LlamaForCausalLM
    except ImportError:
        raise UserError("the torch backend needs the 'torch' extra: pip install 'userlm-local[torch]'") from None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    threads = threads or default_threads(info)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    tokenizer = Tokenizer.from_dir(path)
    fmt = chat_format(tokenizer, add_bos=add_bos, allow_non_userlm=allow_non_userlm)
    try:
        model = LlamaForCausalLM.from_pretrained(
            str(path), dtype=getattr(torch, dtype), use_safetensors=not allow_pickle,
            trust_remote_code=False, local_files_only=True,
        )
    except (OSError, ValueError, RuntimeError, EnvironmentError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: could not load the weights ({first})") from None
    except Exception as exc:  # safetensors raises its own SafetensorError on truncated files
        if type(exc).__name__ != "SafetensorError":
            raise
        raise UserError(f"{path}: could not load the weights ({exc})") from None
    model.eval()
    if device != "cpu":
        check_device(torch, device)
        model.to(device)
    return TorchBackend(str(path), model, tokenizer, fmt, info, device=device, batched=batched)


def check_device(torch, device: str) -> None:
    """A clear error for a device this PyTorch cannot use."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}, no GPU seen"
        raise UserError(f"--device {device}: torch {torch.__version__} cannot use it ({build}); install a CUDA "
                        "build of PyTorch on a machine with an NVIDIA GPU")
    try:
        torch.empty(1, device=device)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"--device {device}: {str(exc).splitlines()[0]}") from None
