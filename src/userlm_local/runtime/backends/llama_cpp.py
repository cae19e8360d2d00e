"""llama.cpp backend on the low-level API: one model, one context, many sessions.

Every session is a sequence id in one context, ``trim`` is ``llama_memory_seq_rm``,
and several sessions' steps share one ``llama_decode`` batch (``extend_many``).  The
KV cache is unified (one pool of cells every sequence attends over, masked) or, with
``kv_split``, a stream per sequence (see ``KV_SPLIT``).
Stop tokens are the chat format's: ``<|endconversation|>`` is not
end-of-generation for llama.cpp, so the simulator stops on it itself.

AMX: on CPUs with AMX (``amx_int8`` in /proc/cpuinfo), llama.cpp's AMX buffer
type crashes ``llama_decode`` on quantized GGUFs (segfault in
``ggml_backend_amx_mul_mat``).  We load with ``use_extra_bufts = False`` on such
CPUs, which keeps every type on the regular CPU kernels; set
``USERLM_LLAMA_EXTRA_BUFTS=1`` to opt back in.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import numpy as np

from ...artifacts.gguf_meta import GGUFFile
from ...artifacts.model_files import (
    ModelInfo,
    check_listed_files,
    is_output_directory,
    listing,
    pick_artifact,
    warn_failed_validation,
)
from ...artifacts.quant_types import FILE_TYPE_NAMES
from ...text.prompt_format import USERLM_TEMPLATE, chat_format, template_sha256
from ...util.errors import UserError
from ...util.machine import cpu_has_amx
from .base import BackendBase, SessionBookkeeping, Usage
from .gguf_tokenizer import GGUFTokenizer


def use_extra_bufts() -> bool:
    """False on AMX CPUs (see the module docstring), unless the user opts in."""
    env = os.environ.get("USERLM_LLAMA_EXTRA_BUFTS")
    if env is not None:
        return env not in ("0", "false", "")
    return not cpu_has_amx()


_LOG_CB = None


def silence_logs(ll) -> None:
    """Silence llama.cpp's stderr chatter (errors still surface as return codes); also what
    restores the silence after someone else (the quantizer) installed its own log callback."""
    global _LOG_CB
    if _LOG_CB is None:
        _LOG_CB = ll.llama_log_callback(lambda level, text, data: None)
    ll.llama_log_set(_LOG_CB, ctypes.c_void_p(0))


def read_metadata(ll, model) -> dict[str, str]:
    out = {}
    key = ctypes.create_string_buffer(256)
    for i in range(ll.llama_model_meta_count(model)):
        ll.llama_model_meta_key_by_index(model, i, key, 256)
        size = ll.llama_model_meta_val_str_by_index(model, i, None, 0)
        val = ctypes.create_string_buffer(max(size, 0) + 1)
        ll.llama_model_meta_val_str_by_index(model, i, val, len(val))
        out[key.value.decode("utf-8", "replace")] = val.value.decode("utf-8", "replace")
    return out


# libgomp's barrier wait: llama.cpp's CPU threads meet at an OpenMP barrier after every op, and
# libgomp spins there a long while first.  On cores other processes share, a spinning thread holds a
# core the other thread of the same op needs: 2 threads fell far below 1 thread's speed (decode 7.9
# tokens/s against 84.7 on a loaded round).  Sleeping at once (OMP_WAIT_POLICY=PASSIVE) fixes that but
# halves decode on an idle machine (futex wake-ups between small ops: 35 against 71).  A short spin
# (GOMP_SPINCOUNT=10000) was best or level on both, loaded and idle, prefill and decode
# (bench/prefill_speed.py, bench/results/prefill_speed.json).  It has to be in the environment before
# libgomp loads (with llama_cpp); an OMP_WAIT_POLICY or GOMP_SPINCOUNT of the user's wins.
SPIN_COUNT: str | None = "10000"

# The KV cache's layout when a context holds several sequences.  Unified: one pool of cells, and
# every token of a batch attends over all of them, the other sequences' masked out, so a batch of
# eight prefills does about eight times the attention work it needs.  Split (``kv_unified =
# false``): a stream per sequence, attention over its own cells only; but llama.cpp then cuts a
# batch into micro-batches that take as many tokens from each sequence, so a batch mixing one
# prefill with seven decode steps costs several passes over the weights.  Measured on the default
# UserLM, 2 cores, 8 sequences (bench/batch_turns.py, bench/campaign_throughput.py --kv): the
# bench's campaign (mostly prefill of replayed assistant turns) 1.24-1.40x faster split, users'
# first turns (mostly decode) 0.6x, a simulation against the default assistant level
# (1.03-1.06x).  So the bench loads split (``kv_split=True``) and every other caller unified; this
# default is what ``load`` uses when the caller does not say.
KV_SPLIT = False


def _llama():
    if SPIN_COUNT and "llama_cpp" not in sys.modules and not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ):
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    try:
        import llama_cpp as ll
    except ImportError:
        raise UserError("GGUF models need the 'llama' extra: pip install 'userlm-local[llama]'") from None
    silence_logs(ll)
    ll.llama_backend_init()
    return ll


class VocabOnly:
    """A GGUF opened for its tokenizer and metadata only (no weights are read)."""

    def __init__(self, path: str | Path):
        ll = self.ll = _llama()
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{path}: no such GGUF file")
        params = ll.llama_model_default_params()
        params.vocab_only = True
        self.model = ll.llama_model_load_from_file(str(p).encode(), params)
        if not self.model:
            raise UserError(f"{path}: llama.cpp could not read this GGUF file (corrupt or unsupported)")
        self.meta = read_metadata(ll, self.model)
        self.tokenizer = GGUFTokenizer(ll, self.model, self.meta)
        # The vocab lives inside the model: it stays loaded as long as the process (it is small,
        # and freeing it at interpreter shutdown races with the library's own teardown).
        _KEEP.append(self.model)


_KEEP: list = []


class LlamaCppSession(SessionBookkeeping):
    def __init__(self, backend: "LlamaCppBackend", seq: int, tokens: list[int] | None = None):
        self.backend = backend
        self.seq = seq
        self.tokens: list[int] = list(tokens or [])
        self.usage = Usage()
        self.context_length = backend.context_length

    def extend(self, ids: list[int]) -> np.ndarray:
        if self.seq is None:
            raise ValueError("session is closed")
        self.check_extend(ids)
        logits = self.backend._decode(self.seq, len(self.tokens), list(ids), all_logits=False)
        self.record_extend(ids)
        return logits

    def trim(self, n: int) -> int:
        keep = self.check_trim(n)
        if n:
            ll = self.backend.ll
            ll.llama_memory_seq_rm(self.backend.memory, self.seq, keep, -1)
            del self.tokens[keep:]
        return len(self.tokens)

    def close(self) -> None:
        if self.seq is not None and self.backend.ctx:
            self.backend.ll.llama_memory_seq_rm(self.backend.memory, self.seq, -1, -1)
            self.backend._free_seq(self.seq)
            self.seq = None
            self.tokens = []

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class LlamaCppBackend(BackendBase):
    name = "llama.cpp"

    def __init__(self, path: str, *, n_ctx: int, n_seq_max: int, n_batch: int, threads: int | None,
                 add_bos: bool, allow_non_userlm: bool, device: str = "cpu", kv_split: bool = False):
        self.ll = ll = _llama()
        self.path = path
        self.device = device
        mparams = ll.llama_model_default_params()
        mparams.use_extra_bufts = use_extra_bufts()
        mparams.n_gpu_layers = -1 if device != "cpu" else 0  # every layer on the GPU, or none
        self.model = ll.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise UserError(f"{path}: llama.cpp could not load this GGUF file")
        self.meta = read_metadata(ll, self.model)
        if self.meta.get("general.architecture") != "llama":
            raise UserError(f"{path}: not a Llama GGUF (architecture {self.meta.get('general.architecture')!r})")
        self.n_ctx_train = ll.llama_model_n_ctx_train(self.model)
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = n_ctx * n_seq_max
        cparams.n_batch = n_batch
        cparams.n_ubatch = min(n_batch, 512)
        cparams.n_seq_max = n_seq_max
        cparams.kv_unified = not kv_split  # one sequence: the same either way
        cparams.n_threads = cparams.n_threads_batch = threads or os.cpu_count() or 1
        self.ctx = ll.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise UserError(f"{path}: llama.cpp could not create a context of {n_ctx * n_seq_max} tokens")
        self.memory = ll.llama_get_memory(self.ctx)
        self.n_batch = n_batch
        self.n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self.model))
        self.context_length = min(n_ctx, self.n_ctx_train)
        self._free = list(range(n_seq_max))
        self._batch = ll.llama_batch_init(n_batch, 0, 1)
        self.tokenizer = GGUFTokenizer(ll, self.model, self.meta)
        self.fmt = chat_format(self.tokenizer, add_bos=add_bos, allow_non_userlm=allow_non_userlm)

    # -- sequences ------------------------------------------------------------------------
    def _take_seq(self) -> int:
        if not self._free:
            raise RuntimeError("all sequences of this llama.cpp context are in use (raise n_seq_max)")
        return self._free.pop(0)

    def _free_seq(self, seq: int) -> None:
        self._free.append(seq)
        self._free.sort()

    def new_session(self) -> LlamaCppSession:
        return LlamaCppSession(self, self._take_seq())

    # -- decoding -------------------------------------------------------------------------
    def _run(self, entries: list[tuple[int, int, int, bool]]) -> list[np.ndarray]:
        """Decode ``(seq, pos, token, want_logits)`` entries in ``n_batch`` chunks; the logits of
        the wanted entries, in order.  The one place that fills a ``llama_batch``."""
        ll, batch, out = self.ll, self._batch, []
        for start in range(0, len(entries), self.n_batch):
            chunk = entries[start:start + self.n_batch]
            batch.n_tokens = len(chunk)
            for i, (seq, pos, tok, want) in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = want
            rc = ll.llama_decode(self.ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed with code {rc}")
            out += [self._logits_at(i) for i, entry in enumerate(chunk) if entry[3]]
        return out

    def _decode(self, seq: int, pos0: int, ids: list[int], all_logits: bool, logits_from: int = 0,
                wanted: frozenset[int] | None = None) -> np.ndarray:
        """Decode ``ids`` at positions pos0.. of ``seq``; last-position logits, or with
        ``all_logits`` those of every index from ``logits_from`` on (or of the indices in
        ``wanted``), in order ([n, vocab])."""
        if not all_logits:
            want = lambda k: k == len(ids) - 1  # noqa: E731
        elif wanted is not None:
            want = wanted.__contains__
        else:
            want = lambda k: k >= logits_from  # noqa: E731
        out = self._run([(seq, pos0 + k, tok, want(k)) for k, tok in enumerate(ids)])
        return np.stack(out) if all_logits else out[-1]

    def extend_many(self, work: list[tuple["LlamaCppSession", list[int]]]) -> list[np.ndarray]:
        """Decode several sessions' new ids in shared ``llama_decode`` batches; last logits of each."""
        for session, ids in work:
            session.check_extend(ids)
        out = self._run([(session.seq, len(session.tokens) + i, tok, i == len(ids) - 1)
                         for session, ids in work for i, tok in enumerate(ids)])
        for session, ids in work:
            session.record_extend(ids)
        return out

    def _logits_at(self, i: int) -> np.ndarray:
        ptr = self.ll.llama_get_logits_ith(self.ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def logits(self, ids: list[int], start: int = 0, positions: list[int] | None = None) -> np.ndarray:
        """Logits at every index of ``ids`` from ``start`` on, or at the sorted indices
        ``positions`` only, in a scratch sequence ([n, vocab])."""
        s = self.new_session()
        try:
            if len(ids) > self.context_length:
                raise UserError(f"{len(ids)} tokens are more than this context of {self.context_length}")
            return self._decode(s.seq, 0, list(ids), all_logits=True, logits_from=start,
                                wanted=None if positions is None else frozenset(positions))
        finally:
            s.close()

    def score(self, ids: list[int], start: int, extra: int | None = None):
        """Teacher-forced log P(ids[i] | ids[:i]) for i in [start, len(ids)); with ``extra``, also
        log P(extra | ids[:i]) at the same positions (a second array)."""
        if not 1 <= start <= len(ids):
            raise ValueError("score() needs 1 <= start <= len(ids)")
        logits = self.logits(ids[:-1], start - 1)
        m = logits.max(axis=1, keepdims=True)
        logz = (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]
        lp = logits[np.arange(len(logits)), ids[start:]] - logz
        return lp if extra is None else (lp, logits[:, extra] - logz)

    def describe(self) -> dict:
        return {"format": "gguf", "quant": self.meta.get("general.file_type")}

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.ll.llama_batch_free(self._batch)
            self.ll.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            if getattr(self, "tokenizer", None) is not None:
                self.tokenizer.close()  # its vocab is freed with the model
            self.ll.llama_model_free(self.model)
            self.model = None


def load(path: str | Path, *, n_ctx: int = 4096, n_seq_max: int = 1, n_batch: int = 512,
         threads: int | None = None, add_bos: bool = False, allow_non_userlm: bool = False,
         dtype: str | None = None, allow_pickle: bool = False, device: str = "cpu",
         kv_split: bool | None = None) -> LlamaCppBackend:
    """``dtype`` and ``allow_pickle`` are accepted for a common CLI and have no effect: a GGUF
    carries its own tensor types and is never pickled.  ``kv_split``: a KV stream per sequence
    (``KV_SPLIT`` when None).  ``device="cuda"`` offloads every layer,
    which needs llama-cpp-python built for CUDA (``CMAKE_ARGS="-DGGML_CUDA=on" pip install
    llama-cpp-python``)."""
    p = Path(path)
    if device != "cpu" and not gpu_offload():
        raise UserError("--device cuda: this llama-cpp-python was built without GPU support; reinstall it with "
                        "CMAKE_ARGS=\"-DGGML_CUDA=on\" pip install --force-reinstall --no-binary llama-cpp-python "
                        "llama-cpp-python")
    if p.is_dir() and is_output_directory(p):  # a convert output directory: its best artifact, as info picks
        _, _, p, _ = pick_artifact(p)
    if not p.is_file():
        raise UserError(f"{path}: no such GGUF file")
    if n_ctx < 16 or n_seq_max < 1:
        raise UserError("n_ctx must be >= 16 and n_seq_max >= 1")
    lst = listing(p, "gguf")
    check_listed_files(lst)  # truncated since conversion: one line, not llama.cpp's failure
    warn_failed_validation(lst)
    return LlamaCppBackend(str(p), n_ctx=n_ctx, n_seq_max=n_seq_max, n_batch=n_batch, threads=threads,
                           add_bos=add_bos, allow_non_userlm=allow_non_userlm, device=device,
                           kv_split=KV_SPLIT if kv_split is None else kv_split)


def gpu_offload() -> bool:
    """Whether this llama-cpp-python was built with a GPU backend (CUDA, Metal, Vulkan...)."""
    try:
        return bool(_llama().llama_supports_gpu_offload())
    except (AttributeError, OSError):
        return False


def inspect(path: str | Path, *, allow_non_userlm: bool = False, allow_pickle: bool = False) -> ModelInfo:
    """The facts of a GGUF file, from its metadata and vocabulary (no weights loaded).
    ``allow_pickle`` is accepted for a common signature: a GGUF is never pickled."""
    p = Path(path)
    v = VocabOnly(p)
    meta, tok = v.meta, v.tokenizer
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise UserError(f"{p}: not a Llama GGUF (general.architecture = {arch!r})")
    fmt_ = chat_format(tok, allow_non_userlm=allow_non_userlm)
    ids = fmt_.ids if fmt_ is not None else None
    num = lambda key, default=0: int(float(meta.get(f"llama.{key}", default)))  # noqa: E731
    template = tok.chat_template
    warnings = []
    if template is None:
        warnings.append("no chat template in the GGUF; the UserLM format is rendered by userlm-local")
    elif template.strip() != USERLM_TEMPLATE.strip():
        warnings.append("the GGUF's chat template differs from UserLM-8b's; userlm-local renders the UserLM format itself")
    eos = {"gguf eos": meta.get("tokenizer.ggml.eos_token_id"), "gguf eot": meta.get("tokenizer.ggml.eot_token_id")}
    heads = num("attention.head_count")
    return ModelInfo(
        path=str(p), format="gguf", architecture="llama",
        hidden_size=num("embedding_length"), num_layers=num("block_count"), num_heads=heads,
        num_kv_heads=num("attention.head_count_kv", heads), intermediate_size=num("feed_forward_length"),
        vocab_size=tok.vocab_size, tokenizer_size=tok.vocab_size, context_length=num("context_length", 2048),
        rope={"type": "llama3" if has_rope_freqs(p) else "default",
              "theta": float(meta.get("llama.rope.freq_base", 10000.0))},
        dtype=FILE_TYPES.get(meta.get("general.file_type"), meta.get("general.file_type")),
        weights=[p.name], special=ids, is_userlm=ids is not None and ids.end_conversation is not None,
        template_sha256=template_sha256(template),
        template_is_userlm=template is not None and template.strip() == USERLM_TEMPLATE.strip(),
        add_bos_token=tok.add_bos_token, eos={k: v for k, v in eos.items() if v is not None},
        warnings=warnings,
        sampling={k.split(".")[-1]: meta[k] for k in meta if k.startswith("general.sampling.")},
    )


def has_rope_freqs(path: Path) -> bool:
    """Llama-3 RoPE scaling lives in GGUF as the ``rope_freqs.weight`` tensor (no metadata key)."""
    return "rope_freqs.weight" in GGUFFile(path).tensors


# llama_ftype as GGUF metadata text ("15") -> its name ("Q4_K_M"), from gguf's LlamaFileType
FILE_TYPES = FILE_TYPE_NAMES
