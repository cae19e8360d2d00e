"""Running untrusted code (an assistant's reply) against tests, never in our own process.

Each check is a fresh child process, ``python -I -S sandbox_child.py`` (isolated mode: no
``PYTHON*`` variable, no user site, no script directory on ``sys.path``; no ``site``: no
site-packages, no ``.pth`` file runs; the program sees the standard library only), started

* in a session of its own, in an empty temporary directory, with a scrubbed environment (``PATH``,
  ``LANG``, ``HOME`` and ``TMPDIR`` pointing into that directory: nothing of ours, no API key),
  stdin at /dev/null, stdout and stderr to files bounded by the file-size limit;
* and killed with everything it started after a wall-clock timeout (default 10 s).

Inside, before any untrusted line runs, the child locks itself in (``sandbox_child``'s docstring:
namespaces, a tmpfs, resource limits, capabilities, no_new_privs, Landlock, seccomp).  We set the
limits in the child rather than in a ``preexec_fn``: the evaluator runs conversations on threads,
where ``preexec_fn`` is unsafe, and the process limit must be set inside the user namespace to count
the sandbox's own processes only.

``probe()`` runs a self-test once and says which layers this system gives; every later check must
get the same layers or it refuses to run the code (``status: error``).  What a layer's absence
leaves open is in ``warnings``: recorded in the report and printed, never silent.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..util.errors import UserError

CHILD = Path(__file__).with_name("sandbox_child.py")
MAX_RESULT = 64 * 1024
TAIL = 400  # characters of stderr kept in a failed check's detail


@dataclass(frozen=True)
class Limits:
    timeout: float = 10.0  # wall-clock seconds for the whole check, interpreter start included
    memory_mb: int = 1024  # address space of the process
    file_mb: int = 16  # the largest file it may write (stdout and stderr included)
    disk_mb: int = 64  # the tmpfs over its directory, where there is a mount namespace
    processes: int = 8  # RLIMIT_NPROC (where seccomp is missing: with it, no process is created at all)

    @property
    def cpu_seconds(self) -> int:
        return max(1, math.ceil(self.timeout))

    def check(self) -> None:
        if not (math.isfinite(self.timeout) and 0 < self.timeout <= 3600):
            raise UserError(f"the check timeout must be in (0, 3600] seconds (got {self.timeout:g})")
        if not 64 <= self.memory_mb <= 1 << 20:
            raise UserError(f"the check memory limit must be at least 64 MiB (got {self.memory_mb})")


@dataclass
class CheckResult:
    passed: bool
    status: str  # passed | failed | timeout | killed | error
    detail: str = ""
    seconds: float = 0.0
    layers: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"passed": self.passed, "status": self.status, "detail": self.detail, "seconds": round(self.seconds, 3)}


# the layers the probe can establish; a check then requires each one the probe found
LAYERS = ("namespaces", "tmpfs", "landlock", "seccomp", "capabilities_dropped", "rlimits")


class Sandbox:
    def __init__(self, limits: Limits = Limits(), *, python: str | None = None, namespaces: bool = True,
                 skip: tuple[str, ...] = ()):
        """``namespaces=False`` and ``skip`` (``landlock``, ``seccomp``) leave layers out: for tests of
        what a system without them gets."""
        limits.check()
        self.skip = tuple(skip)
        self.limits = limits
        self.python = python or sys.executable
        self.namespaces = namespaces
        self._probe: dict | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ the probe
    def probe(self) -> dict:
        """The layers this system gives (a self-test run in the sandbox itself), and what is left
        open without the missing ones.  Run once; raises ``UserError`` when no child starts."""
        with self._lock:
            if self._probe is None:
                res = self._self_test()
                if res.status != "passed" and self.namespaces:  # entering them failed in an unforeseen way
                    first, self.namespaces = res, False
                    res = self._self_test()
                    res.layers["namespaces_error"] = f"{first.status}: {first.detail}"[:200]
                if res.status != "passed":
                    raise UserError(f"the code sandbox does not start here ({res.status}: {res.detail})")
                self._probe = describe(res.layers, self.limits)
            return self._probe

    def _self_test(self) -> CheckResult:
        with socket.create_server(("127.0.0.1", 0)) as listener:  # what a connect would reach
            return self._run({"probe": {"pid": os.getpid(), "port": listener.getsockname()[1]}, "require": []})

    # ------------------------------------------------------------ a check
    def run(self, program: str, tests: str, *, entry_point: str | None = None, call_check: bool = False) -> CheckResult:
        """``program`` then ``tests`` in one namespace; with ``call_check``, then ``check(entry_point)``."""
        required = [k for k in LAYERS if self.probe()["layers"].get(k)]
        return self._run({"program": program, "tests": tests, "entry_point": entry_point,
                          "call_check": call_check, "require": required})

    def _run(self, payload: dict) -> CheckResult:
        t0 = time.monotonic()
        d = tempfile.mkdtemp(prefix="userlm-check-")
        proc = None
        try:
            work = os.path.join(d, "work")
            os.mkdir(work, 0o700)
            out, err, res = (open(os.path.join(d, n), "w+b") for n in ("stdout", "stderr", "result"))
            with out, err, res:
                nonce = secrets.token_hex(16)
                lim = self.limits
                payload = {**payload, "nonce": nonce,
                           "limits": {"cpu_seconds": lim.cpu_seconds, "memory_mb": lim.memory_mb,
                                      "file_mb": lim.file_mb, "processes": lim.processes}}
                cfg = {"stage": "outer", "work": work, "namespaces": self.namespaces, "disk_mb": lim.disk_mb,
                       "result_fd": res.fileno(), "skip": list(self.skip)}
                env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": work, "TMPDIR": work}
                try:
                    proc = subprocess.Popen([self.python, "-I", "-S", str(CHILD), json.dumps(cfg)],
                                            stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=work, env=env,
                                            start_new_session=True, pass_fds=(res.fileno(),), close_fds=True)
                except OSError as exc:
                    return CheckResult(False, "error", f"cannot start {self.python}: {exc.strerror}", 0.0)
                timed_out = False
                try:
                    proc.communicate(json.dumps(payload).encode(), timeout=lim.timeout)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    _kill_group(proc)
                    proc.wait()
                if not (self._probe or {}).get("layers", {}).get("namespaces"):
                    _kill_group(proc)  # without a PID namespace: anything left in its process group
                seconds = time.monotonic() - t0
                return _result(res, err, nonce, proc.returncode, timed_out, lim.timeout, seconds)
        finally:
            if proc is not None and proc.returncode is None:
                _kill_group(proc)
                proc.wait()
            _remove(d)


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _remove(d: str) -> None:
    def fix(func, path, exc):  # a directory the program made unreadable: open it up, try again
        try:
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
            func(path)
        except OSError:
            pass

    shutil.rmtree(d, **({"onexc": fix} if sys.version_info >= (3, 12) else {"onerror": fix}))


def _tail(f, n: int) -> str:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - n))
    return f.read(n).decode("utf-8", "replace").strip()


def _result(res, err, nonce: str, code: int, timed_out: bool, timeout: float, seconds: float) -> CheckResult:
    """The check's outcome: passed only with the nonce's line saying so and a clean exit."""
    if timed_out:
        return CheckResult(False, "timeout", f"timed out after {timeout:g} s", seconds)
    res.seek(0)
    head, _, body = res.read(MAX_RESULT).split(b"\n", 1)[0].decode("utf-8", "replace").partition(" ")
    try:
        r = json.loads(body) if head == nonce else None
    except ValueError:
        r = None
    if isinstance(r, dict) and r.get("status") in ("passed", "failed", "error") and (code == 0 or r["status"] != "passed"):
        layers = dict(r.get("layers") or {})
        if "self_test" in r:
            layers["self_test"] = r["self_test"]
        return CheckResult(r["status"] == "passed", r["status"], str(r.get("detail") or ""), seconds, layers)
    if code < 0 or code > 128:
        sig = -code if code < 0 else code - 128
        name = signal.Signals(sig).name if sig in signal.Signals.__members__.values() else str(sig)
        why = {"SIGXCPU": "the CPU-time limit", "SIGKILL": "killed (the CPU-time limit, or a kill)",
               "SIGXFSZ": "the file-size limit", "SIGSEGV": "a crash (stack or memory)"}.get(name, "a signal")
        return CheckResult(False, "killed", f"{name}: {why}", seconds)
    tail = _tail(err, TAIL)
    return CheckResult(False, "failed", f"exited with status {code} without a result" + (f": {tail}" if tail else ""),
                       seconds)


def describe(layers: dict, limits: Limits) -> dict:
    """The probe's layers as the report gives them: what is enforced how, and warnings for the rest."""
    test = layers.get("self_test", {})
    ns = layers.get("namespaces") or []
    warnings = []
    if not ns:
        warnings.append(f"no namespaces ({layers.get('namespaces_error', 'not tried')}): the program sees every "
                        "process; without a PID namespace a process it leaves behind is killed only with its process group")
    if "net" not in ns and test.get("tcp_connect") == "allowed":
        warnings.append("the network is NOT isolated: no network namespace, no Landlock TCP rules, no seccomp")
    if not layers.get("landlock"):
        warnings.append("no Landlock: writes outside the check's directory are stopped only by file permissions"
                        + (" (and it runs as root)" if os.geteuid() == 0 else ""))
    elif layers["landlock"] < 4 and "net" not in ns:
        warnings.append(f"Landlock ABI {layers['landlock']} has no network rules; no network namespace either")
    if not layers.get("seccomp"):
        warnings.append("no seccomp filter (it is written for x86_64 and aarch64): processes are limited by "
                        "RLIMIT_NPROC only"
                        + (", which does not bind root" if os.geteuid() == 0 else ""))
    if not layers.get("tmpfs"):
        warnings.append(f"no tmpfs: files the program writes go to the real disk, each under {limits.file_mb} MiB, "
                        "their number unbounded until the timeout")
    if test.get("write_outside") == "allowed":
        warnings.append("the self-test wrote outside its directory")
    if test.get("signal_evaluator") == "allowed":
        warnings.append("the program may signal (kill) the evaluator: same user, no PID namespace, no Landlock scope")
    enforced = {
        "process": "a fresh `python -I -S` per check, own session, empty temporary directory, scrubbed environment "
                   f"(the program saw: {', '.join(test.get('environment', [])) or 'nothing'})",
        "limits": f"wall {limits.timeout:g} s (the process group and its PID namespace killed); CPU "
                  f"{limits.cpu_seconds} s; address space {limits.memory_mb} MiB; files {limits.file_mb} MiB each; "
                  f"64 open files; RLIMIT_NPROC {limits.processes}; no core dump",
        "namespaces": ", ".join(ns) or "none",
        "files": (f"Landlock ABI {layers['landlock']}: writes only in the check's directory, reads only of the Python "
                  "installation and system libraries" if layers.get("landlock") else "file permissions only")
                 + (f"; the directory is a {layers['tmpfs']} MiB tmpfs" if layers.get("tmpfs") else ""),
        "network": "; ".join(x for x in ("network namespace (loopback down)" if "net" in ns else "",
                                          "Landlock: no TCP bind or connect" if (layers.get("landlock") or 0) >= 4 else "",
                                          "seccomp: no socket" if layers.get("seccomp") else "") if x) or "NONE",
        "processes": "seccomp: fork, vfork and clone of a process fail (threads only)" if layers.get("seccomp")
                     else f"RLIMIT_NPROC {limits.processes}",
        "signals": "NOT protected: same user" if test.get("signal_evaluator") == "allowed" else
                   "; ".join(x for x in ("PID namespace (no process outside is visible)" if "pid" in ns else "",
                                         "Landlock scope: no signal outside its domain"
                                         if (layers.get("landlock") or 0) >= 6 else "") if x),
        "self_test": {k: v for k, v in test.items() if k != "environment"},
    }
    return {"layers": {k: v for k, v in layers.items() if k != "self_test"}, "enforced": enforced,
            "warnings": warnings, "limits": asdict(limits)}
