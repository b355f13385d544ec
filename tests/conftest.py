"""Shared test helpers: a real backend subprocess speaking the protocol."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_CASES = REPO.parent / "shared" / "real-cases"


class BackendProcess:
    """`python -m mf_backend serve` as a subprocess; every stdout line is collected and must be JSON-RPC."""

    def __init__(self, extra_env: Optional[dict[str, str]] = None):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mf_backend", "serve"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO), env=env,
        )
        self.lines: "queue.Queue[bytes]" = queue.Queue()
        self.raw_stdout: list[bytes] = []
        self.stderr_chunks: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.raw_stdout.append(line)
            self.lines.put(line)

    def _read_err(self) -> None:
        for chunk in self.proc.stderr:
            self.stderr_chunks.append(chunk)

    def send_raw(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, obj: Any) -> None:
        self.send_raw(json.dumps(obj).encode() + b"\n")

    def next_message(self, timeout: float = 30.0) -> dict:
        line = self.lines.get(timeout=timeout)
        return json.loads(line)

    def response(self, req_id: Any, timeout: float = 60.0, on_notification=None) -> dict:
        """Wait for the response to req_id, passing notifications to on_notification."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.next_message(max(0.1, deadline - time.monotonic()))
            if "method" in msg:
                if on_notification:
                    on_notification(msg)
                continue
            assert msg.get("id") == req_id, f"expected response to {req_id!r}, got {msg}"
            return msg

    def request(self, method: str, params: Optional[dict] = None, req_id: Any = 1, timeout: float = 60.0) -> dict:
        msg = {"jsonrpc": "2.0", "id": req_id, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        return self.response(req_id, timeout)

    def cancel(self, job_id: str, job_req_id: Any, timeout: float = 60.0) -> dict:
        """Send `cancel` for job_id and wait for both answers: {req id: (message, time.monotonic() on arrival)}
        for the cancel ("c") and the job's own request (job_req_id)."""
        self.send({"jsonrpc": "2.0", "id": "c", "method": "cancel", "params": {"job_id": job_id}})
        answers = {}
        while not {"c", job_req_id} <= answers.keys():
            msg = self.next_message(timeout=timeout)
            if "id" in msg:
                answers[msg["id"]] = (msg, time.monotonic())
        return answers

    @property
    def stderr(self) -> str:
        return b"".join(self.stderr_chunks).decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"jsonrpc": "2.0", "id": "bye", "method": "shutdown"})
                self.proc.wait(timeout=20)
            except Exception:
                self.proc.kill()
        for s in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                s.close()
            except Exception:
                pass


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny models on a shared 2-core machine: OpenMP threads only fight (measured 0.75 s vs 0.065 s per
    forward), so modules that run them use one thread (`pytestmark = pytest.mark.usefixtures(...)`)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def backend():
    b = BackendProcess()
    yield b
    b.close()


def assert_valid_jsonrpc_line(line: bytes) -> dict:
    msg = json.loads(line)
    assert isinstance(msg, dict) and msg.get("jsonrpc") == "2.0", line
    if "method" in msg:
        assert "id" not in msg and isinstance(msg.get("params"), dict), line
    else:
        assert "id" in msg and (("result" in msg) != ("error" in msg)), line
        if "error" in msg:
            assert isinstance(msg["error"]["code"], int) and isinstance(msg["error"]["message"], str), line
    return msg


def write_noise_avi(path: Path, frames: int, hw: tuple[int, int]) -> Path:
    """An MJPG AVI of `frames` random (H,W) frames at 24 fps."""
    import cv2
    import numpy as np

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 24, (hw[1], hw[0]))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        w.write(rng.integers(0, 255, (*hw, 3), dtype=np.uint8))
    w.release()
    return path


def write_pose_render_clip(folder: Path, frames: int = 12, size: int = 128, phase: float = 0.0) -> Path:
    """A small clip whose frames are pose renders of a waving stick figure (decoded without mediapipe)."""
    import numpy as np

    from mf_backend.media import write_frames
    from mf_backend.pose.keypoints import PoseSequence
    from mf_backend.pose.render import render_poses

    s = size / 128.0
    base = np.array([[64, 22], [64, 36], [52, 36], [46, 52], [42, 66], [76, 36], [82, 52], [86, 66],
                     [56, 66], [55, 88], [54, 110], [72, 66], [73, 88], [74, 110], [61, 19], [67, 19],
                     [58, 21], [70, 21]], np.float32) * s
    body = np.zeros((frames, 18, 3), np.float32)
    body[:, :, :2] = base
    body[:, :, 2] = 1.0
    t = np.arange(frames, dtype=np.float32)
    body[:, 4, 1] -= (10 * s) * (1 + np.sin(t / 2 + phase))  # right wrist waves
    body[:, 7, 1] -= (10 * s) * (1 + np.cos(t / 2 + phase))
    seq = PoseSequence(body=body, hands=np.zeros((frames, 2, 21, 3), np.float32), width=size, height=size, fps=8.0)
    write_frames(render_poses(seq), folder)
    return folder


def write_tiny_case(root: Path, frames: int = 8, size: int = 64) -> Path:
    """Random frames in the example-case layout, poses and masks given (no pose or mask model runs)."""
    import numpy as np

    from mf_backend.media import write_frames, write_masks

    rng = np.random.default_rng(0)
    m = np.zeros((frames, size, size), np.float32)
    m[:, 16:48, 10:30] = 1
    for name in ("source_images", "source_poses", "target_aligned_poses"):
        write_frames(rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8), root / name)
    write_masks(m, root / "source_masks")
    write_masks(np.roll(m, 12, axis=2), root / "predicted_masks")
    return root


def tiny_edit_params(case: Path, model: Path, steps: int) -> dict:
    """Edit parameters (all but `out`) of a fast CPU edit of `write_tiny_case`'s clip with the tiny model."""
    return {"model": str(model), "device": "cpu", "precision": "fp32", "size": 64, "steps": steps,
            "crop": "letterbox", "source": str(case / "source_images"), "driving": str(case / "target_aligned_poses"),
            "source_poses": str(case / "source_poses"), "target_aligned_poses": str(case / "target_aligned_poses"),
            "source_masks": str(case / "source_masks"), "predicted_masks": str(case / "predicted_masks")}


def documented_result(method: str) -> dict:
    """The example `result` of `method` in docs/protocol.md (the reply a test compares with the real one)."""
    import re

    text = (REPO / "docs" / "protocol.md").read_text()
    section = text.split(f"### `{method}`", 1)[1].split("\n### ", 1)[0]
    for block in re.findall(r"```json\n(.*?)```", section, flags=re.S):
        msg = json.loads(block)
        if "result" in msg:
            return msg["result"]
    raise AssertionError(f"docs/protocol.md has no example result for {method}")


def assert_matches_docs(method: str, result: dict, optional: tuple[str, ...] = ()) -> None:
    """The real reply has exactly the documented keys (`optional` ones may be absent), nested objects too."""
    doc = documented_result(method)
    assert set(result) <= set(doc), f"{method}: undocumented keys {set(result) - set(doc)}"
    assert set(doc) - set(optional) <= set(result), f"{method}: documented but missing {set(doc) - set(result)}"
    for key, value in doc.items():
        if isinstance(value, dict) and key in result and key not in ("timings", "weights", "capabilities", "settings"):
            assert set(result[key]) == set(value), f"{method}.{key}: {set(result[key]) ^ set(value)}"


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """The tiny random-weight model saved in our own layout (modules may define their own)."""
    from mf_backend.models.loading import build_models, save_models

    return save_models(build_models("tiny", seed=0), tmp_path_factory.mktemp("models") / "tiny")
