"""llama.cpp backend on the low-level API: one model, one context, many sessions.

Every session is a sequence id in one context with a unified KV cache, so
``fork`` is a metadata copy (``llama_memory_seq_cp``), ``trim`` is
``llama_memory_seq_rm``, and ``snapshot`` saves only that sequence's KV
(``llama_state_seq_get_data``), never the vocabulary-sized logits rows.
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
from pathlib import Path

import numpy as np

from ..chat import chat_format
from ..errors import UserError
from ..machine import cpu_has_amx
from .base import TokenizerMixin, Usage
from .gguf_tokenizer import GGUFTokenizer


def use_extra_bufts() -> bool:
    """False on AMX CPUs (see the module docstring), unless the user opts in."""
    env = os.environ.get("USERLM_LLAMA_EXTRA_BUFTS")
    if env is not None:
        return env not in ("0", "false", "")
    return not cpu_has_amx()


_LOG_CB = None


def _quiet(ll) -> None:
    """Silence llama.cpp's stderr chatter (errors still surface as return codes)."""
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


def _llama():
    try:
        import llama_cpp as ll
    except ImportError:
        raise UserError("GGUF models need the 'llama' extra: pip install 'userlm-local[llama]'") from None
    _quiet(ll)
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


class LlamaCppSession:
    def __init__(self, backend: "LlamaCppBackend", seq: int, tokens: list[int] | None = None):
        self.backend = backend
        self.seq = seq
        self.tokens: list[int] = list(tokens or [])
        self.usage = Usage()
        self.context_length = backend.context_length

    def extend(self, ids: list[int]) -> np.ndarray:
        if not ids:
            raise ValueError("extend() needs at least one token")
        if self.seq is None:
            raise ValueError("session is closed")
        if len(self.tokens) + len(ids) > self.context_length:
            raise UserError(
                f"the conversation needs {len(self.tokens) + len(ids)} tokens, more than this "
                f"session's context of {self.context_length}"
            )
        logits = self.backend._decode(self.seq, len(self.tokens), list(ids), all_logits=False)
        self.tokens += list(ids)
        self.usage.decoded += len(ids)
        self.usage.extend_calls += 1
        return logits

    def trim(self, n: int) -> int:
        if n < 0 or n > len(self.tokens):
            raise ValueError(f"cannot trim {n} of {len(self.tokens)} tokens")
        if n:
            keep = len(self.tokens) - n
            ll = self.backend.ll
            ll.llama_memory_seq_rm(self.backend.memory, self.seq, keep, -1)
            del self.tokens[keep:]
        return len(self.tokens)

    def fork(self) -> "LlamaCppSession":
        b = self.backend
        seq = b._take_seq()
        b.ll.llama_memory_seq_cp(b.memory, self.seq, seq, -1, -1)
        return LlamaCppSession(b, seq, self.tokens)

    def snapshot(self) -> tuple[list[int], bytes]:
        b, ll = self.backend, self.backend.ll
        size = ll.llama_state_seq_get_size(b.ctx, self.seq)
        buf = (ctypes.c_uint8 * size)()
        written = ll.llama_state_seq_get_data(b.ctx, buf, size, self.seq)
        return list(self.tokens), bytes(buf[:written])

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


class LlamaCppBackend(TokenizerMixin):
    name = "llama.cpp"

    def __init__(self, path: str, *, n_ctx: int, n_seq_max: int, n_batch: int, threads: int | None,
                 add_bos: bool, allow_non_userlm: bool):
        self.ll = ll = _llama()
        self.path = path
        mparams = ll.llama_model_default_params()
        mparams.use_extra_bufts = use_extra_bufts()
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
        cparams.kv_unified = True
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

    def restore(self, state) -> LlamaCppSession:
        tokens, data = state
        s = self.new_session()
        self.ll.llama_memory_seq_rm(self.memory, s.seq, -1, -1)
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if self.ll.llama_state_seq_set_data(self.ctx, buf, len(data), s.seq) == 0:
            s.close()
            raise RuntimeError("llama.cpp refused the session snapshot")
        s.tokens = list(tokens)
        return s

    # -- decoding -------------------------------------------------------------------------
    def _decode(self, seq: int, pos0: int, ids: list[int], all_logits: bool, logits_from: int = 0,
                wanted: frozenset[int] | None = None) -> np.ndarray:
        """Decode ``ids`` at positions pos0.. of ``seq``; last-position logits, or with
        ``all_logits`` those of every index from ``logits_from`` on (or of the indices in
        ``wanted``), in order ([n, vocab])."""
        want = (lambda k: k in wanted) if wanted is not None else (lambda k: k >= logits_from)
        ll, batch, out, last = self.ll, self._batch, [], 0
        for start in range(0, len(ids), self.n_batch):
            chunk = ids[start:start + self.n_batch]
            last_chunk = start + len(chunk) == len(ids)
            batch.n_tokens = len(chunk)
            for i, tok in enumerate(chunk):
                batch.token[i] = tok
                batch.pos[i] = pos0 + start + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = (all_logits and want(start + i)) or (last_chunk and i == len(chunk) - 1)
            rc = ll.llama_decode(self.ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed with code {rc}")
            if all_logits:
                out += [self._logits_at(i) for i in range(len(chunk)) if want(start + i)]
            last = len(chunk) - 1
        return np.stack(out) if all_logits else self._logits_at(last)

    def extend_many(self, work: list[tuple["LlamaCppSession", list[int]]]) -> list[np.ndarray]:
        """Decode several sessions' new ids in shared ``llama_decode`` batches; last logits of each."""
        for session, ids in work:
            if not ids:
                raise ValueError("extend_many() needs at least one token per session")
            if len(session.tokens) + len(ids) > session.context_length:
                raise UserError(f"the conversation needs {len(session.tokens) + len(ids)} tokens, more "
                                f"than this session's context of {session.context_length}")
        flat = [(j, session.seq, len(session.tokens) + i, tok, i == len(ids) - 1)
                for j, (session, ids) in enumerate(work) for i, tok in enumerate(ids)]
        out: list[np.ndarray | None] = [None] * len(work)
        ll, batch = self.ll, self._batch
        for start in range(0, len(flat), self.n_batch):
            chunk = flat[start:start + self.n_batch]
            batch.n_tokens = len(chunk)
            for i, (_, seq, pos, tok, want) in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = want
            rc = ll.llama_decode(self.ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed with code {rc}")
            for i, (j, _, _, _, want) in enumerate(chunk):
                if want:
                    out[j] = self._logits_at(i)
        for session, ids in work:
            session.tokens += list(ids)
            session.usage.decoded += len(ids)
            session.usage.extend_calls += 1
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

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.ll.llama_batch_free(self._batch)
            self.ll.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            self.ll.llama_model_free(self.model)
            self.model = None


def load(path: str | Path, *, n_ctx: int = 4096, n_seq_max: int = 1, n_batch: int = 512,
         threads: int | None = None, add_bos: bool = False, allow_non_userlm: bool = False,
         dtype: str | None = None, allow_pickle: bool = False) -> LlamaCppBackend:
    """``dtype`` and ``allow_pickle`` are accepted for a common CLI and have no effect: a GGUF
    carries its own tensor types and is never pickled."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such GGUF file")
    if n_ctx < 16 or n_seq_max < 1:
        raise UserError("n_ctx must be >= 16 and n_seq_max >= 1")
    return LlamaCppBackend(str(p), n_ctx=n_ctx, n_seq_max=n_seq_max, n_batch=n_batch, threads=threads,
                           add_bos=add_bos, allow_non_userlm=allow_non_userlm)
