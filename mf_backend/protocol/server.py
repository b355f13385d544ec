"""The serve loop: reads requests from stdin, runs at most one job at a time on a worker thread.

Rules (docs/protocol.md): every request gets exactly one response; notifications get none; no input
line can stop the server; stdout carries protocol lines only.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import uuid
from typing import Any, BinaryIO, Optional

from mf_backend import PROTOCOL_VERSION, __version__
from mf_backend import errors as E
from mf_backend.dispatch import check_params, run_job
from mf_backend.jobs import JobContext
from mf_backend.params import JobParams
from mf_backend.protocol.lines import LineTooLong, Writer, read_lines

log = logging.getLogger(__name__)

JOB_METHODS = ("prepare", "edit", "queue")
EOF_GRACE_S = 0.5  # after stdin closes, a running job gets this long to stop before the process exits
METHODS = ("initialize", "prepare", "edit", "queue", "cancel", "shutdown")
SETTINGS = ("models_dir", "device", "precision", "threads")  # server-wide job defaults (serve flags, initialize)
SHUTDOWN_WAIT_S = 10.0  # a cancelled job stops within one sub-pass; exit anyway after this


class _ProtocolError(Exception):
    def __init__(self, code: int, message: str, data: Optional[dict] = None):
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _OneJob:
    """A `prepare` or `edit` request as the server's job; protocol/queue_job.py has the same face
    (`job_id`, `cancel(job_id)` that says whether it named this job, `run()`) for a queue of them."""

    def __init__(self, method: str, params: JobParams, ctx: JobContext):
        self.method, self.params, self.ctx, self.job_id = method, params, ctx, ctx.job_id

    def cancel(self, job_id: Optional[str] = None) -> bool:
        if job_id not in (None, self.job_id):
            return False
        self.ctx.cancel()
        return True

    def run(self) -> dict[str, Any]:
        return run_job(self.method, self.params, self.ctx)


class Server:
    def __init__(self, stdin: BinaryIO, stdout, defaults: Optional[dict[str, Any]] = None):
        self.stdin = stdin
        self.writer = Writer(stdout)
        self.defaults = dict(defaults or {})  # e.g. models_dir/device from the command line or initialize
        self._job_lock = threading.Lock()
        self._job: Optional[tuple[Any, threading.Thread]] = None  # (_OneJob or QueueJob, its thread)
        self._stop = threading.Event()

    # ---- main loop -------------------------------------------------------------------------
    def run(self) -> int:
        for raw in read_lines(self.stdin):
            if isinstance(raw, LineTooLong):
                self._error(None, E.INVALID_REQUEST, f"Invalid Request: {raw}")
                continue
            try:
                self.handle_line(raw)
            except Exception as exc:  # the loop must survive anything
                log.exception("unexpected error handling a line")
                self._error(None, E.INTERNAL_ERROR, f"Internal error: {type(exc).__name__}: {exc}")
            if self._stop.is_set():
                break
        # stdin closed without shutdown: the client (Blender) is gone; give the job a moment only
        self._cancel_job(wait=True, timeout=SHUTDOWN_WAIT_S if self._stop.is_set() else EOF_GRACE_S)
        return 0

    @property
    def job_running(self) -> bool:
        with self._job_lock:
            return self._job is not None and self._job[1].is_alive()

    def handle_line(self, raw: bytes) -> None:
        if not raw.strip():
            return  # blank lines are tolerated and ignored
        try:
            msg = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            self._error(None, E.PARSE_ERROR, f"Parse error: {exc}"[:300])
            return
        if not isinstance(msg, dict):
            what = "batches are not supported" if isinstance(msg, list) else "a request must be a JSON object"
            self._error(None, E.INVALID_REQUEST, f"Invalid Request: {what}")
            return
        if "method" not in msg and ("result" in msg or "error" in msg):
            return  # a response from the client: we never send requests, ignore it
        is_notification = "id" not in msg
        req_id = msg.get("id")
        if not is_notification and (isinstance(req_id, bool) or not isinstance(req_id, (str, int, type(None)))):
            self._error(None, E.INVALID_REQUEST, "Invalid Request: id must be a string, an integer or null")
            return
        # An object that is not a valid request is answered (id null if it had none), as in the spec's
        # examples; only a valid notification goes unanswered.
        if msg.get("jsonrpc") != "2.0":
            self._error(req_id, E.INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"')
            return
        method = msg.get("method")
        if not isinstance(method, str):
            self._error(req_id, E.INVALID_REQUEST, 'Invalid Request: "method" must be a string')
            return
        params = msg.get("params", {})
        if params is None:
            params = {}
        try:
            if not isinstance(params, dict):
                raise _ProtocolError(E.INVALID_PARAMS, "Invalid params: params must be a JSON object")
            self._dispatch(method, params, req_id, is_notification)
        except _ProtocolError as exc:
            if not is_notification:
                self._error(req_id, exc.code, exc.message, exc.data)
        except E.MFError as exc:
            if not is_notification:
                self._error(req_id, exc.code, exc.message, exc.to_data())
        except Exception as exc:  # a bug: still answer this request's id, and go on
            log.exception("unexpected error in %s", method)
            if not is_notification:
                self._error(req_id, E.INTERNAL_ERROR, f"Internal error: {type(exc).__name__}: {exc}"[:500])

    # ---- methods -----------------------------------------------------------------------------
    def _dispatch(self, method: str, params: dict, req_id: Any, is_notification: bool) -> None:
        if method == "cancel":
            result = self._cancel(params)
        elif method == "shutdown":
            self._cancel_job(wait=True)
            self._stop.set()
            result = {"ok": True}
        elif is_notification:
            log.info("ignoring notification %r (only cancel and shutdown act as notifications)", method)
            return
        elif method == "initialize":
            result = self._initialize(params)
        elif method in JOB_METHODS:
            self._start_job(method, params, req_id)
            return  # answered by the job thread
        else:
            raise _ProtocolError(E.METHOD_NOT_FOUND, f"Method not found: {method[:100]}",
                                 {"methods": list(METHODS)})
        if not is_notification:
            self.writer.send({"jsonrpc": "2.0", "id": req_id, "result": result})

    def _initialize(self, params: dict) -> dict[str, Any]:
        """Report the backend; the settings given become the defaults of later jobs, but only once they
        validated exactly as a job's would (an error leaves the server as it was)."""
        from mf_backend.environment import backend_info

        settings = {**self.defaults, **{k: params[k] for k in SETTINGS if k in params}}
        settings = {k: v for k, v in settings.items() if v is not None}
        JobParams.from_dict(settings)  # types and allowed values, as for a job
        info = backend_info(settings.get("models_dir"), settings.get("device", "auto"),
                            settings.get("precision", "auto"))  # e.g. cuda asked, none visible
        self.defaults = settings
        info["settings"] = dict(settings)
        info.update(protocolVersion=PROTOCOL_VERSION, backendVersion=__version__,
                    serverInfo={"name": "mf_backend", "version": __version__})
        info["capabilities"]["methods"] = list(METHODS)
        return info

    def _cancel(self, params: dict) -> dict[str, Any]:
        job_id = params.get("job_id")
        with self._job_lock:
            job = self._job
        if job is None or not job[0].cancel(job_id):  # a queue's shot is cancelled alone
            return {"cancelled": False, "job_id": job_id, "reason": "no such running job"}
        return {"cancelled": True, "job_id": job_id or job[0].job_id}

    def _start_job(self, method: str, params: dict, req_id: Any) -> None:
        job_id = params.get("job_id")
        if job_id is not None and not isinstance(job_id, str):
            raise _ProtocolError(E.INVALID_PARAMS, "Invalid params: job_id must be a string")
        job_id = job_id or (str(req_id) if req_id is not None else uuid.uuid4().hex[:8])
        settings = {k: v for k, v in self.defaults.items() if k in SETTINGS}
        if method == "queue":
            from mf_backend.protocol.queue_job import QueueJob

            job: Any = QueueJob(job_id, params, settings, self._notify)
        else:
            job_params = JobParams.from_dict({**settings, **{k: v for k, v in params.items() if k != "job_id"}})
            check_params(method, job_params)
            job = _OneJob(method, job_params, JobContext(job_id=job_id, sink=self._send_progress))
        with self._job_lock:
            if self._job is not None and self._job[1].is_alive():
                raise E.Busy(f"busy: job {self._job[0].job_id} is running",
                             "wait for it to finish or send cancel first")
            thread = threading.Thread(target=self._run_job, args=(job, req_id), name=f"job-{job_id}", daemon=True)
            self._job = (job, thread)
            thread.start()

    def _run_job(self, job: Any, req_id: Any) -> None:
        try:
            reply = {"jsonrpc": "2.0", "id": req_id, "result": {"job_id": job.job_id, **job.run()}}
        except BaseException as exc:  # noqa: BLE001 - every failure becomes an error response
            err = E.translate_exception(exc)
            if not isinstance(exc, E.MFError):
                log.exception("job %s failed", job.job_id)
            else:
                log.info("job %s ended: %s", job.job_id, err.message)
            data = {"job_id": job.job_id, **err.to_data()}
            reply = {"jsonrpc": "2.0", "id": req_id, "error": {"code": err.code, "message": err.message, "data": data}}
        # not busy any more BEFORE the reply: a client may send the next job as soon as it reads it
        with self._job_lock:
            if self._job is not None and self._job[0] is job:
                self._job = None
        self.writer.send(reply)

    def _cancel_job(self, wait: bool, timeout: float = SHUTDOWN_WAIT_S) -> None:
        with self._job_lock:
            job = self._job
        if job is not None:
            job[0].cancel()
            if wait:
                job[1].join(timeout=timeout)

    # ---- output ------------------------------------------------------------------------------
    def _send_progress(self, event: dict[str, Any]) -> None:
        self._notify("progress", event)

    def _notify(self, method: str, params: dict[str, Any]) -> None:
        self.writer.send({"jsonrpc": "2.0", "method": method, "params": params})

    def _error(self, req_id: Any, code: int, message: str, data: Optional[dict] = None) -> None:
        error: dict[str, Any] = {"code": code, "message": message}
        if data:
            error["data"] = data
        self.writer.send({"jsonrpc": "2.0", "id": req_id, "error": error})


def serve(defaults: Optional[dict[str, Any]] = None) -> int:
    """Run the server on this process's stdin/stdout (stdout is then reserved for the protocol)."""
    from mf_backend.logs import protocol_stdout, use_stderr_for_prints

    out = protocol_stdout()
    use_stderr_for_prints()
    server = Server(sys.stdin.buffer, out, defaults)
    code = server.run()
    if server.job_running:
        log.warning("exiting with a job still running (its step did not end within %.1f s)", EOF_GRACE_S)
    # End now: not after a running step, and not through the interpreter's shutdown, which takes
    # seconds with torch loaded (the client is gone or said shutdown; every answer is written).
    if "mf_backend.distributed.cluster" in sys.modules:  # a local Ray cluster an edit started here
        sys.modules["mf_backend.distributed.cluster"].stop_local(graceful=False)  # os._exit skips exit hooks
    logging.shutdown()
    for stream in (out, sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
