"""Facts about this machine, read in one place: CPU model and flags, memory, library versions,
and the git commit of a source checkout (for benchmark and bench records)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_has_amx(kind: str = "any") -> bool:
    """An AMX unit: ``any`` (amx_tile, amx_int8: what trips llama.cpp's AMX buffers) or ``bf16``
    (amx_bf16: what makes torch's bf16 autocast pay)."""
    flags = cpu_flags()
    return "amx_bf16" in flags if kind == "bf16" else bool(flags & {"amx_tile", "amx_int8"})


def meminfo(key: str) -> int | None:
    """A /proc/meminfo entry in bytes (MemAvailable, MemTotal, ...), or None where unreadable."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def version(dist: str) -> str | None:
    try:
        from importlib.metadata import version as v

        return v(dist)
    except Exception:
        return None


def git_commit(root: Path | None = None) -> str | None:
    """The commit of the source checkout this package runs from (None when installed from a wheel):
    a clone, or a ``git worktree`` (its ``.git`` a file naming its own git directory, the branches in
    the main one's), the branch loose or packed."""
    root = root or Path(__file__).resolve().parents[3]
    try:
        git = root / ".git"
        if git.is_file():
            text = git.read_text().strip()
            if not text.startswith("gitdir: "):
                return None
            git = (root / text[8:]).resolve()
        ref = (git / "HEAD").read_text().strip()
        if not ref.startswith("ref: "):
            return ref[:12]
        name = ref[5:]
        common = (git / (git / "commondir").read_text().strip()).resolve() if (git / "commondir").is_file() else git
        for base in (git, common):
            if (base / name).is_file():
                return (base / name).read_text().strip()[:12]
        packed = common / "packed-refs"
        lines = packed.read_text().splitlines() if packed.is_file() else []
        return next((line.split()[0][:12] for line in lines if line.endswith(" " + name)), None)
    except OSError:
        return None


def facts() -> dict:
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu_model": cpu_model(),
        "cpu_flags": sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx", "avx2", "avx_vnni", "f16c"))),
        "cores": os.cpu_count(),
        "mem_total_gib": round((meminfo("MemTotal") or 0) / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {m: version(m) for m in ("userlm-local", "llama_cpp_python", "gguf", "numpy", "torch",
                                             "transformers", "safetensors", "matplotlib")},
        "git_commit": git_commit(),
    }
