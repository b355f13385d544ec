"""The protocol's `queue` method through the real backend subprocess, on the local Ray cluster it starts
(2 logical GPUs, tiny model at 64²): per-shot progress and summaries, cancel of one shot or of the whole
queue, and a bad job refused before anything starts."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from conftest import (BackendProcess, assert_matches_docs, assert_valid_jsonrpc_line, documented_result,
                      tiny_edit_params, write_tiny_case)

from mf_backend import errors as E


@pytest.fixture(scope="module")
def server():
    """One backend for the module: its local Ray cluster starts with the first queue and serves the rest
    (it outlives the job thread that started it: cluster._init_in_keeper)."""
    pytest.importorskip("ray")
    b = BackendProcess()
    yield b
    for line in b.raw_stdout:
        assert_valid_jsonrpc_line(line)
    b.close()


def _queue(tmp_path: Path, model: Path, steps: list[int], job_id: str) -> dict:
    """Params of a queue with one shot per entry of `steps` (shot0, shot1, ...), each to its own out folder."""
    defaults = tiny_edit_params(write_tiny_case(tmp_path / "case"), model, steps=2)
    jobs = [{"job_id": f"shot{i}", "out": str(tmp_path / f"out{i}"), "steps": n, "seed": i} for i, n in enumerate(steps)]
    return {"job_id": job_id, "workers": 2, "defaults": defaults, "jobs": jobs}


def _run(b: BackendProcess, params: dict, req_id: str, on_event=None) -> tuple[dict, list[dict], dict]:
    """Send the queue; returns its response, every notification, and the other responses by id (requests
    that `on_event(params)` sends while the queue runs)."""
    b.send({"jsonrpc": "2.0", "id": req_id, "method": "queue", "params": params})
    events, others = [], {}
    while True:
        msg = b.next_message(timeout=240)
        if "method" in msg:
            events.append(msg)
            if on_event:
                on_event(msg["params"])
        elif msg["id"] == req_id:
            return msg, events, others
        else:
            others[msg["id"]] = msg


def _states(events: list[dict], shot: str) -> list[str]:
    return [e["params"]["state"] for e in events if e["method"] == "shot_state" and e["params"]["shot"] == shot]


def _partials(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_two_shots_report_progress_and_answer_with_their_summaries(server, tiny_folder, tmp_path):
    r, events, _ = _run(server, _queue(tmp_path, tiny_folder, [2, 2], "q1"), "q")
    assert "result" in r, r
    assert_matches_docs("queue", r["result"])  # docs/protocol.md shows this reply
    shots = r["result"]["shots"]
    assert r["result"]["job_id"] == "q1"
    assert [(s["job_id"], s["state"], s["attempts"]) for s in shots] == [("shot0", "done", 1), ("shot1", "done", 1)]
    assert set(shots[0]) == set(documented_result("queue")["shots"][0])
    assert_matches_docs("edit", shots[0]["result"], optional=("job_id", "video", "notice", "warnings"))
    assert all(e["params"]["job_id"] == "q1" for e in events)
    for i, shot in enumerate(("shot0", "shot1")):
        assert _states(events, shot) == ["running", "done"]
        progress = [e["params"] for e in events if e["method"] == "progress" and e["params"]["shot"] == shot]
        assert progress and all({"stage", "done", "total", "fraction", "eta_s", "attempt"} <= set(p) for p in progress)
        assert [p["fraction"] for p in progress] == sorted(p["fraction"] for p in progress)
        assert shots[i]["result"]["out"] == str(tmp_path / f"out{i}")
        assert len(list((tmp_path / f"out{i}").glob("frame_*.png"))) == 8
    assert not _partials(tmp_path)


def test_cancel_of_one_shot_lets_the_other_finish(server, tiny_folder, tmp_path):
    sent = []

    def on_event(p):  # shot1 (many steps) is cancelled once it edits; a second job meanwhile is busy
        if p["shot"] == "shot1" and p.get("stage") == "editing" and not sent:
            sent.append(p)
            server.send({"jsonrpc": "2.0", "id": "c", "method": "cancel", "params": {"job_id": "shot1"}})
            server.send({"jsonrpc": "2.0", "id": "busy", "method": "edit", "params": {**params["defaults"],
                                                                                       "out": str(tmp_path / "x")}})
    params = _queue(tmp_path, tiny_folder, [2, 200], "q2")
    r, events, others = _run(server, params, "q", on_event)
    assert sent and others["c"]["result"] == {"cancelled": True, "job_id": "shot1"}
    assert others["busy"]["error"]["code"] == E.BUSY and "q2" in others["busy"]["error"]["message"]
    shots = {s["job_id"]: s for s in r["result"]["shots"]}
    assert (shots["shot0"]["state"], shots["shot1"]["state"]) == ("done", "cancelled"), r
    assert shots["shot1"]["error"]["type"] == "Cancelled"
    assert _states(events, "shot1") == ["running", "cancelled"]
    assert (tmp_path / "out0" / "edit.json").exists() and not (tmp_path / "out1").exists()
    assert not _partials(tmp_path)


def test_cancel_of_the_queue_answers_cancelled_with_the_summaries(server, tiny_folder, tmp_path):
    sent = []

    def on_event(p):
        if p.get("stage") == "editing" and not sent:
            sent.append(p)
            server.send({"jsonrpc": "2.0", "id": "c", "method": "cancel", "params": {"job_id": "q3"}})
    r, events, others = _run(server, _queue(tmp_path, tiny_folder, [200, 200], "q3"), "q", on_event)
    assert others["c"]["result"] == {"cancelled": True, "job_id": "q3"}
    assert r["error"]["code"] == E.CANCELLED and r["error"]["data"]["job_id"] == "q3", r
    assert [s["state"] for s in r["error"]["data"]["shots"]] == ["cancelled", "cancelled"]
    assert not (tmp_path / "out0").exists() and not (tmp_path / "out1").exists() and not _partials(tmp_path)
    r = server.request("cancel", {"job_id": "q3"}, req_id="late")  # not busy any more
    assert r["result"]["cancelled"] is False


def test_a_bad_job_is_refused_up_front_naming_it(server, tiny_folder, tmp_path):
    events = []

    def ask(req_id: str, params: dict) -> dict:
        server.send({"jsonrpc": "2.0", "id": req_id, "method": "queue", "params": params})
        return server.response(req_id, on_notification=events.append)
    params = _queue(tmp_path, tiny_folder, [2, 2], "q4")
    params["jobs"][1]["source"] = str(tmp_path / "nope.mp4")
    r = ask("bad", params)
    assert r["error"]["code"] == E.INVALID_PARAMS and "job shot1" in r["error"]["message"], r
    assert "nope.mp4" in r["error"]["message"]
    params["jobs"][1] = {**params["jobs"][0], "job_id": "shot9"}  # the same out folder twice
    r = ask("bad2", params)
    assert r["error"]["code"] == E.INVALID_PARAMS and "job shot9" in r["error"]["message"], r
    r = ask("bad3", {**params, "jobs": params["jobs"][:1], "gpus": 2})
    assert r["error"]["code"] == E.INVALID_PARAMS and "gpus" in r["error"]["message"], r
    assert not events and not (tmp_path / "out0").exists()  # nothing started
    assert server.request("cancel", {}, req_id="idle")["result"]["cancelled"] is False


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
    """In-process server (no Ray needed): `queue` refused at once with the install hint."""
    import importlib.util

    from mf_backend.protocol.server import Server

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a))
    out = io.BytesIO()
    Server(io.BytesIO(), out).handle_line(json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "queue", "params": {"jobs": [{"source": "a"}]}}).encode())
    error = json.loads(out.getvalue())["error"]
    assert error["code"] == E.INVALID_PARAMS and "Ray is not installed" in error["message"]
    assert "install.py --with-ray" in error["data"]["hint"]
