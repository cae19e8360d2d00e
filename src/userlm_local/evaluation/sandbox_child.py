"""The sandbox's child process (``sandbox.py`` is the parent's side).  Run as a file,
``python -I -S sandbox_child.py CONFIG``; importing it does nothing.  Standard library only: the child
sees no site-packages (``-S``), no ``PYTHON*`` variable, no user site and no script directory (``-I``).

Two stages.  The *outer* stage (started by the evaluator in a session of its own, with a scrubbed
environment, in an empty directory) enters new namespaces where the kernel allows it: network (no
interface but a loopback that is down), PID (it cannot see or signal any process outside; when its
PID 1 exits the kernel kills every process left inside), mount (a size-limited tmpfs over the work
directory, gone with the namespace), IPC and UTS; a user namespace first when it is not root.  It
then forks twice and execs the *inner* stage, a fresh interpreter (the exec drops any capability the user
namespace gave), killed with its parent (PR_SET_PDEATHSIG), under a trusted PID 1 that only waits
(so the program's parent is a process it may not signal, and its death tears the namespace down).

The inner stage reads the payload (program, tests, limits, nonce) from stdin, points stdin at
/dev/null, then locks itself in before any untrusted line runs: resource limits (CPU seconds, address
space, file size, open files, processes, no core), every capability dropped when it runs as root,
no_new_privs, Landlock (writes only under the work directory; reads only of the Python installation,
the system libraries and the work directory; no TCP bind or connect; no signal to and no abstract
UNIX socket of any process outside its domain) and a seccomp filter (no new process: fork, vfork and
clone without CLONE_THREAD fail with EAGAIN; no socket, no socketpair, no io_uring).  Then it runs
the program and the tests in one namespace and writes one line to the result descriptor:
``NONCE {json}``.  Whatever the program does to the process (exit, kill, exhaust a limit), the parent
counts a check as passed only when that line says so.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import resource
import signal
import struct
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_THREAD = 0x10000000, 0x20000000, 0x40000000, 0x00010000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 2, 4, 0x4000, 1 << 18
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 1, 24, 38, 22
SECCOMP_MODE_FILTER = 2

# Landlock (include/uapi/linux/landlock.h)
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1, 2, 4, 8
FS_MAKE_CHAR, FS_MAKE_BLOCK = 1 << 6, 1 << 11
FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | (1 << 14) | (1 << 15)  # + TRUNCATE, IOCTL_DEV
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2
SYS = {"x86_64": {"landlock": (444, 445, 446), "fork": 57, "vfork": 58, "clone": 56, "clone3": 435,
                  "socket": 41, "socketpair": 53, "io_uring": (425, 426, 427), "audit_arch": 0xC000003E},
       "aarch64": {"landlock": (444, 445, 446), "fork": None, "vfork": None, "clone": 220, "clone3": 435,
                   "socket": 198, "socketpair": 199, "io_uring": (425, 426, 427), "audit_arch": 0xC00000B7}}
# read-only for the untrusted program, besides the interpreter's own sys.path
SYSTEM_READ = ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", "/etc/ld.so.cache",
               "/etc/localtime", "/usr/share/zoneinfo")

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def _err() -> str:
    return os.strerror(ctypes.get_errno())


# ---------------------------------------------------------------- outer stage

def outer(cfg: dict) -> None:
    facts = {"namespaces": None, "tmpfs": None}
    if cfg["namespaces"]:
        root = os.geteuid() == 0
        uid, gid = os.geteuid(), os.getegid()
        flags = CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | (0 if root else CLONE_NEWUSER)
        if libc.unshare(flags) == 0:
            facts["namespaces"] = ["net", "pid", "mount", "ipc", "uts"] + ([] if root else ["user"])
            if not root:  # the same uid inside; anything else stays unmapped
                for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                    with open(f"/proc/self/{name}", "w") as f:
                        f.write(text)
            work = cfg["work"]
            if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) == 0 and libc.mount(
                    b"tmpfs", work.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                    f"size={cfg['disk_mb']}m,mode=0700".encode()) == 0:
                facts["tmpfs"] = cfg["disk_mb"]
            else:
                facts["tmpfs_error"] = _err()
            os.chdir(work)  # the tmpfs, not the directory under it
        else:
            facts["namespaces_error"] = _err()
    argv = [sys.executable, "-I", "-S", os.path.abspath(__file__), json.dumps({**cfg, "stage": "inner", "facts": facts})]
    os._exit(wait_for(spawn(lambda: wait_for(spawn(lambda: os.execv(sys.executable, argv))))))


def spawn(body) -> int:
    """A child that dies with its parent (PR_SET_PDEATHSIG) and runs ``body``."""
    pid = os.fork()
    if pid == 0:
        code = 127
        try:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            code = body()
        finally:
            os._exit(code if isinstance(code, int) else 127)
    return pid


def wait_for(pid: int) -> int:
    """Reap children until ``pid`` ends (as PID 1 this reaps orphans too); its status as an exit code."""
    while True:
        done, status = os.wait()
        if done == pid:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code


# ---------------------------------------------------------------- inner stage: locking in

def set_limits(limits: dict) -> None:
    mib = 2 ** 20
    cpu = int(limits["cpu_seconds"])
    for which, soft, hard in ((resource.RLIMIT_CPU, cpu, cpu + 1),
                              (resource.RLIMIT_AS, limits["memory_mb"] * mib, limits["memory_mb"] * mib),
                              (resource.RLIMIT_FSIZE, limits["file_mb"] * mib, limits["file_mb"] * mib),
                              (resource.RLIMIT_NOFILE, 64, 64),
                              (resource.RLIMIT_NPROC, limits["processes"], limits["processes"]),
                              (resource.RLIMIT_CORE, 0, 0)):
        resource.setrlimit(which, (soft, hard))


def drop_capabilities() -> bool:
    """Root (no user namespace): empty the bounding set, then every capability set.  A uid-0
    process without capabilities is still the owner of root's files: Landlock is what keeps them."""
    if os.geteuid() != 0:
        return True
    last = 40
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        pass
    for cap in range(last + 1):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    header = struct.pack("II", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = bytes(24)  # two {effective, permitted, inheritable} triples, all zero
    hb, db = ctypes.create_string_buffer(header), ctypes.create_string_buffer(data)
    return libc.syscall(126 if platform.machine() == "x86_64" else 91, hb, db) == 0  # capset


def landlock(work: str, read_paths: list[str], nrs: dict) -> int | None:
    """Landlock at the best ABI the kernel has; its ABI, or None where it has none."""
    create, add_rule, restrict = nrs["landlock"]
    abi = libc.syscall(create, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        return None
    fs = FS_RIGHTS_BY_ABI[max(k for k in FS_RIGHTS_BY_ABI if k <= abi)]
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = struct.pack("QQQ", fs, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    buf = ctypes.create_string_buffer(attr[:size])
    fd = libc.syscall(create, buf, size, 0)
    if fd < 0:
        raise OSError(f"landlock_create_ruleset: {_err()}")
    rules = [(work, fs & ~(FS_MAKE_CHAR | FS_MAKE_BLOCK))]
    rules += [(p, FS_EXECUTE | FS_READ_FILE | FS_READ_DIR) for p in read_paths]
    for path, rights in rules:
        try:
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # a library directory this system does not have
        if not os.path.isdir(path):
            rights &= FILE_RIGHTS
        rule = ctypes.create_string_buffer(struct.pack("=Qi", rights & fs, pfd))
        ok = libc.syscall(add_rule, fd, LANDLOCK_RULE_PATH_BENEATH, rule, 0)
        os.close(pfd)
        if ok != 0:
            raise OSError(f"landlock_add_rule {path}: {_err()}")
    if libc.syscall(restrict, fd, 0) != 0:
        raise OSError(f"landlock_restrict_self: {_err()}")
    os.close(fd)
    return int(abi)


def seccomp(nrs: dict) -> None:
    """No new process, no socket, no io_uring (whose operations bypass seccomp); any other
    architecture's system call ABI (i386 on x86_64) kills the process."""
    ld = lambda k: (0x20, 0, 0, k)  # noqa: E731  BPF_LD|BPF_W|BPF_ABS
    jeq = lambda k, jt, jf: (0x15, jt, jf, k)  # noqa: E731
    ret = lambda k: (0x06, 0, 0, k)  # noqa: E731
    allow, kill = 0x7FFF0000, 0x80000000
    errno_ = lambda e: 0x00050000 | e  # noqa: E731
    prog = [ld(4), jeq(nrs["audit_arch"], 1, 0), ret(kill), ld(0)]
    if nrs["audit_arch"] == 0xC000003E:  # x32 system calls
        prog += [(0x35, 0, 1, 0x40000000), ret(errno_(1))]
    denied = [(nrs["fork"], 11), (nrs["vfork"], 11), (nrs["clone3"], 38), (nrs["socket"], 13),
              (nrs["socketpair"], 13)] + [(n, 1) for n in nrs["io_uring"]]
    for nr, e in denied:  # EAGAIN, ENOSYS (glibc then makes threads with clone), EACCES, EPERM
        if nr is not None:
            prog += [jeq(nr, 0, 1), ret(errno_(e))]
    prog += [jeq(nrs["clone"], 0, 3), ld(16), (0x45, 1, 0, CLONE_THREAD), ret(errno_(11)), ret(allow)]
    raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    filt = ctypes.create_string_buffer(raw)
    fprog = ctypes.create_string_buffer(struct.pack("HxxxxxxQ", len(prog), ctypes.addressof(filt)))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fprog, 0, 0) != 0:
        raise OSError(f"seccomp: {_err()}")


def lock_in(cfg: dict, limits: dict) -> dict:
    """Every layer this system allows, in order; what each did (``layers``)."""
    layers = dict(cfg["facts"])
    nrs = SYS.get(platform.machine())
    read_paths = [os.path.realpath(p) for p in sys.path if p] + list(SYSTEM_READ)
    layers["capabilities_dropped"] = drop_capabilities()
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(f"no_new_privs: {_err()}")
    skip = cfg.get("skip", ())  # layers left out on purpose: the tests of the warnings
    layers["landlock"] = landlock(os.getcwd(), read_paths, nrs) if nrs and "landlock" not in skip else None
    layers["seccomp"] = bool(nrs) and "seccomp" not in skip
    if layers["seccomp"]:
        seccomp(nrs)
    set_limits(limits)
    layers["rlimits"] = True
    return layers


# ---------------------------------------------------------------- inner stage: the check

def self_test(work_parent: str, probe: dict) -> dict:
    """What the probe checks from inside, after locking in: can it write outside, connect, fork?"""
    import socket

    out = {}
    try:
        with open(os.path.join(work_parent, "escape"), "w"):
            pass
        out["write_outside"] = "allowed"
    except OSError as exc:
        out["write_outside"] = f"denied ({exc.strerror})"
    try:  # the evaluator listens on this port for the probe
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(1.0)
        s.connect(("127.0.0.1", probe["port"]))
        s.close()
        out["tcp_connect"] = "allowed"
    except OSError as exc:
        out["tcp_connect"] = f"denied ({exc.strerror or exc})"
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        out["fork"] = "allowed"
    except OSError as exc:
        out["fork"] = f"denied ({exc.strerror})"
    try:
        os.kill(probe["pid"], 0)  # signal 0: may it signal the evaluator at all?
        out["signal_evaluator"] = "allowed"
    except OSError as exc:
        out["signal_evaluator"] = f"denied ({exc.strerror})"
    out["environment"] = sorted(os.environ)
    return out


def inner(cfg: dict) -> None:
    payload = json.loads(sys.stdin.buffer.read())
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.close(null)
    result_fd, nonce = cfg["result_fd"], payload["nonce"]

    def report(result: dict) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # the program may have replaced or closed them
                pass
        try:
            os.write(result_fd, f"{nonce} {json.dumps(result)}\n".encode())
        finally:
            os._exit(0)

    try:
        layers = lock_in(cfg, payload["limits"])
    except BaseException as exc:
        report({"status": "error", "detail": f"sandbox: {exc}", "layers": cfg["facts"]})
    missing = [k for k in payload.get("require", []) if not layers.get(k)]
    if missing:
        report({"status": "error", "detail": f"sandbox: {', '.join(missing)} did not apply", "layers": layers})
    if payload.get("probe"):
        report({"status": "passed", "layers": layers, "self_test": self_test(os.path.dirname(os.getcwd()), payload["probe"])})
    ns = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        exec(compile(payload["program"], "<solution>", "exec"), ns)
        exec(compile(payload["tests"], "<tests>", "exec"), ns)
        if payload.get("call_check"):
            ns["check"](ns[payload["entry_point"]])
        result = {"status": "passed"}
    except BaseException as exc:  # SystemExit and KeyboardInterrupt fail the check too
        text = str(exc)
        result = {"status": "failed", "detail": (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:400]}
    report({**result, "layers": layers})


def main() -> None:
    cfg = json.loads(sys.argv[1])
    outer(cfg) if cfg["stage"] == "outer" else inner(cfg)


if __name__ == "__main__":
    main()
