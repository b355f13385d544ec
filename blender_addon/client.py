"""The backend subprocess and its JSON-RPC client. Pure Python: no bpy, testable anywhere.

`BackendClient` starts `<python> -m mf_backend serve` in its own process group (POSIX session /
Windows process group), so cancel and exit can kill the whole tree, torch workers included. A
reader thread parses stdout (protocol lines only, docs/protocol.md) and files each message:
responses wake the request that waits for them, `progress` notifications update the running
`Job`. stderr goes to a log file and a short in-memory tail that error messages quote. When stdout
closes, every waiting request and job fails with `BackendDied` carrying the exit code and that tail.
"""

from __future__ import annotations

import atexit
import collections
import itertools
import json
import os
import signal
import subprocess
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

PROTOCOL_MAJOR = "1"
CANCEL_GRACE_S = 10.0  # the least time a cancel gets before the backend tree is killed
INITIALIZE_TIMEOUT_S = 120.0  # the first start imports torch and may load CUDA: tens of seconds on a cold disk
CANCELLED_CODE = -32003  # mf_backend.errors.CANCELLED (the add-on must not import the backend)


# ---- errors ------------------------------------------------------------------------------------

class BackendError(Exception):
    """An error answer from the backend (or a failure to talk to it), with the backend's hint."""

    def __init__(self, message: str, code: Optional[int] = None, hint: str = "", data: Optional[dict] = None):
        super().__init__(message)
        self.message, self.code, self.hint, self.data = message, code, hint, dict(data or {})

    @property
    def cancelled(self) -> bool:
        return self.code == CANCELLED_CODE

    def __str__(self) -> str:
        return f"{self.message} -> {self.hint}" if self.hint else self.message


class BackendDied(BackendError):
    """The backend process ended (crash, kill, out of memory) while something waited on it."""


# ---- jobs --------------------------------------------------------------------------------------

@dataclass
class Job:
    """A running `prepare`/`edit` request. The reader thread writes; the UI thread reads `snapshot()`."""

    job_id: str
    method: str
    request_id: int
    stage: str = "starting"
    done: int = 0
    total: int = 0
    fraction: float = 0.0
    eta_s: Optional[float] = None
    elapsed_s: float = 0.0
    message: str = ""
    step_s: float = 0.0  # longest time between two progress events: how long one step can take
    result: Optional[dict] = None
    error: Optional[BackendError] = None
    started: float = field(default_factory=time.monotonic)
    last_progress: Optional[float] = None
    _finished: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._finished.wait(timeout)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"job_id": self.job_id, "stage": self.stage, "done": self.done, "total": self.total,
                    "fraction": self.fraction, "eta_s": self.eta_s, "message": self.message,
                    "elapsed_s": time.monotonic() - self.started, "finished": self.finished,
                    "error": self.error, "result": self.result}

    @property
    def cancel_grace_s(self) -> float:
        """How long a cancel may take: the backend stops after the current step (a CPU step can be
        longer than the fixed minimum, and killing a backend that was about to stop costs a restart)."""
        return max(CANCEL_GRACE_S, 2.0 * self.step_s + 2.0)

    def _progress(self, p: dict) -> None:
        now = time.monotonic()
        with self._lock:
            if self.last_progress is not None and p.get("stage") == self.stage:
                self.step_s = max(self.step_s, now - self.last_progress)
            self.last_progress = now
            self.stage = str(p.get("stage", self.stage))
            self.done, self.total = int(p.get("done", 0) or 0), int(p.get("total", 0) or 0)
            self.fraction = max(self.fraction, float(p.get("fraction", 0.0) or 0.0))
            self.eta_s = p.get("eta_s")
            self.message = str(p.get("message") or "")

    def _finish(self, result: Optional[dict], error: Optional[BackendError]) -> None:
        with self._lock:
            if self._finished.is_set():
                return
            self.result, self.error = result, error
            if error is None:
                self.fraction, self.stage = 1.0, "done"
        self._finished.set()


class Request:
    """A request sent to the backend; the reader thread fills in its answer."""

    def __init__(self, job: Optional[Job] = None):
        self.event = threading.Event()
        self.result: Optional[dict] = None
        self.error: Optional[BackendError] = None
        self.job = job
        self.sent = time.monotonic()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """True once answered (result or error)."""
        return self.event.wait(timeout)

    def finish(self, result: Optional[dict], error: Optional[BackendError]) -> None:
        self.result, self.error = result, error
        self.event.set()
        if self.job is not None:
            self.job._finish(result, error)


# ---- the client --------------------------------------------------------------------------------

_LIVE: "weakref.WeakSet[BackendClient]" = weakref.WeakSet()


@atexit.register
def _kill_all() -> None:
    for client in list(_LIVE):
        client.kill()


class BackendClient:
    """One backend process. Thread-safe for one caller thread plus the internal reader threads."""

    def __init__(self, python: str, repo: Optional[str] = None, models_dir: Optional[str] = None,
                 device: str = "auto", precision: str = "auto", log_path: Optional[str] = None,
                 env: Optional[dict[str, str]] = None, threads: int = 0):
        self.python, self.repo, self.models_dir = python, repo, models_dir
        self.device, self.precision, self.threads = device, precision, threads
        self.log_path, self.extra_env = log_path, dict(env or {})
        self.proc: Optional[subprocess.Popen] = None
        self.stderr_tail: "collections.deque[str]" = collections.deque(maxlen=40)
        self._ids = itertools.count(1)
        self._pending: dict[int, Request] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._dead = threading.Event()

    # ---- process --------------------------------------------------------------------------
    def command(self) -> list[str]:
        cmd = [self.python, "-u", "-m", "mf_backend", "serve"]
        if self.models_dir:
            cmd += ["--models-dir", self.models_dir]
        return cmd + ["--device", self.device, "--precision", self.precision]

    def start(self) -> "BackendClient":
        if not self.python or not Path(self.python).exists():
            raise BackendError(f"backend Python not found: '{self.python}'",
                               hint="run install.py, or set the backend Python in the add-on preferences")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", **self.extra_env}
        for key in ("PYTHONHOME", "PYTHONPATH"):  # Blender's own Python settings must not leak into the venv
            if key not in self.extra_env:
                env.pop(key, None)
        if self.repo:
            env["PYTHONPATH"] = self.repo + (os.pathsep + self.extra_env["PYTHONPATH"] if "PYTHONPATH" in self.extra_env else "")
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # own process group: killpg reaches every child
        try:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, cwd=self.repo or None, env=env, **kwargs)
        except OSError as exc:
            raise BackendError(f"could not start the backend '{self.python}': {exc}",
                               hint="check the backend Python in the add-on preferences (run install.py)") from exc
        _LIVE.add(self)
        threading.Thread(target=self._read_stdout, name="mf-backend-stdout", daemon=True).start()
        threading.Thread(target=self._read_stderr, name="mf-backend-stderr", daemon=True).start()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and not self._dead.is_set() and self.proc.poll() is None

    pid = property(lambda self: self.proc.pid if self.proc else None)

    def kill(self) -> None:
        """Kill the backend and everything it started, at once."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            if os.name == "nt":
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True)
            else:
                os.killpg(proc.pid, signal.SIGKILL)  # pgid == pid: start_new_session
        except (ProcessLookupError, PermissionError, OSError):
            proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def close(self, timeout: float = 10.0) -> None:
        """shutdown → EOF on stdin → wait → kill the tree."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                self._send({"jsonrpc": "2.0", "id": next(self._ids), "method": "shutdown"})
                proc.stdin.close()
                proc.wait(timeout=timeout)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
            self.kill()
        _LIVE.discard(self)

    # ---- messages -------------------------------------------------------------------------
    def _send(self, msg: dict) -> None:
        if self.proc is None or self.proc.stdin is None:
            raise BackendError("the backend is not started")
        line = json.dumps(msg, ensure_ascii=True, separators=(",", ":")) + "\n"
        try:
            with self._write_lock:
                self.proc.stdin.write(line.encode("ascii"))
                self.proc.stdin.flush()
        except (OSError, ValueError) as exc:
            raise self._death_error() from exc

    def _new_request(self, method: str, params: dict, job: Optional[Job] = None) -> tuple[int, Request]:
        req_id = job.request_id if job else next(self._ids)
        pending = Request(job)
        with self._lock:
            if self._dead.is_set():
                raise self._death_error()
            self._pending[req_id] = pending
        self._send({"jsonrpc": "2.0", "id": req_id, "method": method, "params": params})
        return req_id, pending

    def request(self, method: str, params: Optional[dict] = None, timeout: float = 120.0) -> dict:
        """Send a request and wait for its answer; raises BackendError / BackendDied."""
        req_id, pending = self._new_request(method, params or {})
        if not pending.event.wait(timeout):
            with self._lock:
                self._pending.pop(req_id, None)
            raise BackendError(f"the backend did not answer '{method}' within {timeout:.0f} s",
                               hint="see the backend log; restart the backend")
        if pending.error is not None:
            raise pending.error
        return pending.result or {}

    def send_initialize(self) -> Request:
        """The handshake, sent without waiting: the UI polls `Request.wait(0)` between timer ticks."""
        params = {"protocolVersion": PROTOCOL_MAJOR + ".0", "models_dir": self.models_dir, "device": self.device,
                  "precision": self.precision, **({"threads": self.threads} if self.threads else {})}
        return self._new_request("initialize", params)[1]

    def check_initialize(self, answered: Request) -> dict:
        """The backend's info from an answered `initialize`; raises on an error or another protocol major."""
        if answered.error is not None:
            raise answered.error
        info = answered.result or {}
        if str(info.get("protocolVersion", "")).split(".")[0] != PROTOCOL_MAJOR:
            raise BackendError(f"backend speaks protocol {info.get('protocolVersion')}, the add-on {PROTOCOL_MAJOR}.x",
                               hint="update the add-on and the backend together (run install.py)")
        return info

    def initialize(self, timeout: float = INITIALIZE_TIMEOUT_S) -> dict:
        req = self.send_initialize()
        if not req.wait(timeout):
            raise BackendError(f"the backend did not answer 'initialize' within {timeout:.0f} s",
                               hint="see the backend log; restart the backend")
        return self.check_initialize(req)

    def start_job(self, method: str, params: dict, job_id: Optional[str] = None) -> Job:
        """Send `prepare`/`edit` and return at once; the Job fills in as progress arrives."""
        req_id = next(self._ids)
        job = Job(job_id=job_id or f"job{req_id}", method=method, request_id=req_id)
        self._new_request(method, {**params, "job_id": job.job_id}, job)
        return job

    def request_cancel(self, job: Job) -> None:
        """Ask the backend to stop the job after its current step; returns at once."""
        if job.finished:
            return
        try:
            self._send({"jsonrpc": "2.0", "method": "cancel", "params": {"job_id": job.job_id}})
        except BackendError:
            pass  # a dead backend has stopped the job already; the reader thread fails it

    def cancel(self, job: Job, grace_s: Optional[float] = None) -> None:
        """request_cancel, then kill the whole tree if the job has not ended within the grace period
        (default: the job's `cancel_grace_s`)."""
        self.request_cancel(job)
        if not job.wait(job.cancel_grace_s if grace_s is None else grace_s):
            self.kill()
            job.wait(5)

    # ---- reader threads -------------------------------------------------------------------
    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                msg = json.loads(raw.decode("utf-8"))
            except ValueError:
                self.stderr_tail.append(f"[non-protocol stdout] {raw[:200]!r}")
                continue
            if isinstance(msg, dict):
                self._dispatch(msg)
        try:
            self.proc.wait(timeout=10)  # reaped; the exit code is proc.returncode
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.05)  # let the stderr thread collect the last lines for the error message
        with self._lock:
            self._dead.set()
            pending, self._pending = list(self._pending.values()), {}
        err = self._death_error()
        for p in pending:
            p.finish(None, err)

    def _dispatch(self, msg: dict) -> None:
        if msg.get("method") == "progress" and isinstance(msg.get("params"), dict):
            params = msg["params"]
            with self._lock:
                jobs = [p.job for p in self._pending.values() if p.job and p.job.job_id == params.get("job_id")]
            for job in jobs:
                job._progress(params)
            return
        if "id" not in msg:
            return
        with self._lock:
            pending = self._pending.pop(msg["id"], None) if isinstance(msg["id"], int) else None
        if pending is None:
            if "error" in msg:  # an error with id null: a bug on either side; keep it for the log
                self.stderr_tail.append(f"[protocol error] {msg['error']}")
            return
        if "error" in msg:
            e = msg["error"] if isinstance(msg["error"], dict) else {}
            data = e.get("data") if isinstance(e.get("data"), dict) else {}
            pending.finish(None, BackendError(str(e.get("message", "backend error")), e.get("code"),
                                              str(data.get("hint", "")), data))
        else:
            pending.finish(msg.get("result") if isinstance(msg.get("result"), dict) else {"value": msg.get("result")}, None)

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        log = None
        if self.log_path:
            try:
                Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
                log = open(self.log_path, "a", encoding="utf-8")
            except OSError:
                log = None
        try:
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", errors="replace").rstrip()
                self.stderr_tail.append(line)
                if log:
                    log.write(line + "\n")
                    log.flush()
        finally:
            if log:
                log.close()

    def _death_error(self) -> BackendDied:
        code = self.proc.poll() if self.proc else None
        how = f"exit code {code}" if code is not None and code >= 0 else (
            f"killed by signal {-code}" if code is not None else "no exit code")
        tail = "\n".join(list(self.stderr_tail)[-8:])
        if "ModuleNotFoundError" in tail or "No module named" in tail:
            hint = (f"'{self.python}' is not the backend's Python (it lacks the backend's packages): run "
                    "install.py, or set the backend Python in the add-on preferences to the venv it made")
        else:
            hint = ("see the backend log; out of memory is the usual cause of a sudden stop — "
                    "try a smaller resolution or fewer frames; press Run to start a new backend")
        return BackendDied(f"the backend stopped ({how})" + (f"; last log lines:\n{tail}" if tail else ""), hint=hint)
