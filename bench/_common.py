"""Shared helpers of the benchmark scripts in bench/ (not part of the package).

* ``machine_facts()``: CPU model, cores, memory, date and library versions, recorded with
  every result file;
* ``run_measured(cmd)``: one command in its own process; wall seconds, CPU seconds and that
  process's own peak RSS (``os.wait4`` rusage, which is per child, unlike
  ``getrusage(RUSAGE_CHILDREN)`` that keeps the maximum over all children so far), plus the
  peak anonymous and file-backed parts sampled from ``/proc/PID/status``;
* ``drop_page_cache()``: start a measurement with a cold page cache (needs root);
* ``table()`` and ``save_results()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

from userlm_local.util.machine import facts

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"


def _cpu_ticks() -> dict[int, tuple[int, str]]:
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            out[int(d.name)] = (int(fields[11]) + int(fields[12]), cmd or stat[stat.index("(") + 1:stat.rindex(")")])
        except (OSError, ValueError, IndexError):
            continue
    return out


def other_busy_processes(interval: float = 1.0, threshold: float = 0.2) -> list[str]:
    """Other processes using at least ``threshold`` of a core over the next ``interval`` seconds
    (e.g. training jobs or test runs): timings taken meanwhile are contended."""
    hz = os.sysconf("SC_CLK_TCK")
    a = _cpu_ticks()
    time.sleep(interval)
    b = _cpu_ticks()
    mine = {os.getpid()}
    busy = []
    for pid, (ticks, cmd) in b.items():
        if pid in mine or pid not in a:
            continue
        share = (ticks - a[pid][0]) / hz / interval
        if share >= threshold:
            busy.append(f"{pid} {share:.0%} {cmd[:100]}")
    return busy


def machine_facts() -> dict:
    return {**facts(), "busy_processes_at_start": other_busy_processes()}


def drop_page_cache() -> bool:
    """sync + drop the page cache (cold start for I/O-heavy measurements); False when not permitted."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _status_kib(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "RssAnon:", "RssFile:", "RssShmem:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    except (OSError, ValueError):
        pass
    return out


def run_measured(cmd: list[str], *, env: dict | None = None, log: Path | None = None, cwd: Path | None = None,
                 sample_s: float = 0.2, limit_as: int | None = None) -> dict:
    """Run ``cmd`` to its end; wall/CPU seconds and the peak RSS of that one process.

    ``peak_rss`` is the kernel's high-water mark of the process (``ru_maxrss``, from ``os.wait4``).
    ``peak_anon`` / ``peak_file`` are the highest anonymous and file-backed (mmap'ed file pages)
    resident sizes seen by sampling every ``sample_s`` seconds: ``ru_maxrss`` counts both.
    ``limit_as``: an address-space limit (bytes) for the command.
    """
    logf = open(log, "ab") if log else subprocess.DEVNULL
    if log:
        logf.write(f"\n$ {' '.join(map(str, cmd))}\n".encode())
        logf.flush()
        log_start = logf.tell()
    peaks = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    t0 = time.perf_counter()
    def limit():  # address-space limit: an allocation fails instead of the OOM killer stepping in
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    proc = subprocess.Popen([str(c) for c in cmd], env=env, cwd=cwd, stdout=logf, stderr=subprocess.STDOUT,
                            preexec_fn=limit if limit_as else None)
    done = threading.Event()

    def sample():
        while not done.is_set():
            st = _status_kib(proc.pid)
            for k in peaks:
                peaks[k] = max(peaks[k], st.get(k, 0))
            done.wait(sample_s)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        _, status, ru = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        raise
    finally:
        done.set()
        th.join()
        if log:
            logf.close()
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    tail = []
    if log:
        with open(log, "rb") as f:  # this command's own output (the log may be shared)
            f.seek(log_start)
            text = f.read().decode(errors="replace").replace("\r", "\n")
        tail = [ln.rstrip() for ln in text.splitlines() if ln.strip()][-12:]
    return {
        "cmd": [str(c) for c in cmd],
        "rc": proc.returncode,
        "seconds": round(seconds, 2),
        "cpu_user_s": round(ru.ru_utime, 2),
        "cpu_sys_s": round(ru.ru_stime, 2),
        "peak_rss_bytes": ru.ru_maxrss * 1024,
        "peak_anon_bytes_sampled": peaks["RssAnon"] * 1024,
        "peak_file_bytes_sampled": peaks["RssFile"] * 1024,
        "read_blocks": ru.ru_inblock,
        "written_blocks": ru.ru_oublock,
        "read_bytes": ru.ru_inblock * 512,
        "written_bytes": ru.ru_oublock * 512,
        "output_tail": tail,
    }


def gib(n: float | int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    out = ([title] if title else []) + [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def save_results(name: str, data: dict, path: Path | None = None) -> Path:
    path = path or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path

