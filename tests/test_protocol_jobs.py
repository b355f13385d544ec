"""Jobs over the protocol: prepare with progress, atomic output; edit cancel/busy (real subprocess)."""

from __future__ import annotations

from conftest import BackendProcess, assert_matches_docs, assert_valid_jsonrpc_line, write_pose_render_clip


def test_prepare_job_reports_progress_and_writes_layout(tmp_path):
    src = write_pose_render_clip(tmp_path / "src", frames=10)
    drv = write_pose_render_clip(tmp_path / "drv", frames=14, phase=1.5)
    out = tmp_path / "job" / "prepared"
    b = BackendProcess()
    events = []
    try:
        b.send({"jsonrpc": "2.0", "id": "p", "method": "prepare",
                "params": {"job_id": "prep-1", "source": str(src), "driving": str(drv), "out": str(out),
                           "mask_predictor": "geometric"}})  # the flat key of 0.1: mapped, with a warning
        r = b.response("p", timeout=240, on_notification=events.append)
        assert "result" in r, r
        assert r["result"]["job_id"] == "prep-1"
        warnings = r["result"].pop("warnings")
        assert len(warnings) == 1 and "advanced.mask_predictor" in warnings[0] and "deprecated" in warnings[0]
        assert_matches_docs("prepare", r["result"])  # docs/protocol.md shows this reply
        assert r["result"]["folders"]["source_masks"] == str(out / "source_masks")
        for kind in ("source_poses", "target_poses", "target_aligned_poses"):
            assert len(list((out / kind).glob("frame_*.png"))) == 10
        # no temporary folders left beside the output
        assert [p.name for p in out.parent.iterdir()] == ["prepared"]
        assert events and all(e["method"] == "progress" and e["params"]["job_id"] == "prep-1" for e in events)
        fractions = [e["params"]["fraction"] for e in events]
        assert fractions == sorted(fractions) and fractions[-1] > 0.5
        for e in events:
            p = e["params"]
            assert {"stage", "done", "total", "message", "eta_s"} <= set(p) and 0 <= p["done"] <= p["total"]
        # same output again: refused, the user's folder untouched
        r = b.request("prepare", {"source": str(src), "driving": str(drv), "out": str(out)}, req_id="again")
        assert r["error"]["code"] == -32602 and "not empty" in r["error"]["message"]
        for line in b.raw_stdout:
            assert_valid_jsonrpc_line(line)
    finally:
        b.close()


def test_edit_cancel_over_the_protocol_is_fast_and_leaves_nothing(tmp_path):
    """A real `edit` job: busy while it runs, cancel answered at once, the job ends with `cancelled`
    within 2 s of the step it was in, and no output (or temporary folder) is left."""
    import time

    import numpy as np

    from mf_backend.media import write_frames, write_masks
    from mf_backend.models.loading import build_models, save_models

    model = save_models(build_models("tiny", 0), tmp_path / "tiny")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    m = np.zeros((8, 64, 64), np.float32)
    m[:, 10:54, 20:40] = 1
    case = tmp_path / "case"
    for kind in ("source_images", "source_poses", "target_aligned_poses"):
        write_frames(frames, case / kind)
    write_masks(m, case / "source_masks")
    write_masks(np.roll(m, 8, axis=2), case / "predicted_masks")
    out = tmp_path / "result" / "edited"
    params = {"job_id": "e1", "source": str(case / "source_images"), "driving": str(case / "target_aligned_poses"),
              "out": str(out), "model": str(model), "device": "cpu", "precision": "fp32", "steps": 200,
              "size": 64, "crop": "letterbox", "source_poses": str(case / "source_poses"),
              "target_aligned_poses": str(case / "target_aligned_poses"),
              "source_masks": str(case / "source_masks"), "predicted_masks": str(case / "predicted_masks")}
    b = BackendProcess()
    try:
        b.send({"jsonrpc": "2.0", "id": "edit", "method": "edit", "params": params})
        while True:  # wait until sampling is under way
            msg = b.next_message(timeout=240)
            assert "method" in msg, msg
            if msg["params"]["stage"] == "editing" and msg["params"]["done"] >= 2:
                break
        r = b.request("edit", {**params, "job_id": "e2", "out": str(tmp_path / "other")}, req_id="second")
        assert r["error"]["code"] == -32005 and "e1" in r["error"]["message"]  # busy
        t_cancel = time.monotonic()
        answers = b.cancel("e1", "edit")
        assert answers["c"][0]["result"] == {"cancelled": True, "job_id": "e1"}
        err, t_end = answers["edit"]
        assert err["error"]["code"] == -32003 and err["error"]["data"]["job_id"] == "e1"
        print(f"cancel latency {t_end - t_cancel:.2f} s")
        assert t_end - t_cancel < 2.0 + 3.0  # one tiny step plus slack for a loaded CI machine
        assert not out.exists() and list(out.parent.iterdir()) == []
        assert not (tmp_path / "other").exists()
        r = b.request("initialize", {}, req_id="alive")  # the server is still there
        assert "result" in r
        # a job sent as soon as the cancelled reply arrived is accepted (the busy flag was cleared first)
        third = tmp_path / "third"
        b.send({"jsonrpc": "2.0", "id": "e3", "method": "edit", "params": {**params, "job_id": "e3", "out": str(third)}})
        while True:
            msg = b.next_message(timeout=240)
            assert "error" not in msg, msg  # not busy
            if msg.get("method") == "progress" and msg["params"]["stage"] == "editing":
                break
        t_shutdown = time.monotonic()  # shutdown during a job: cancels it, answers and exits promptly
        b.send({"jsonrpc": "2.0", "id": "bye", "method": "shutdown"})
        answers = {}
        while "bye" not in answers:
            msg = b.next_message(timeout=60)
            if "id" in msg:
                answers[msg["id"]] = msg
        t_answer = time.monotonic() - t_shutdown
        assert b.proc.wait(timeout=30) == 0
        t_exit = time.monotonic() - t_shutdown
        print(f"shutdown during a job: answered after {t_answer:.2f} s, process gone after {t_exit:.2f} s")
        assert t_answer < 2.0 + 3.0 and t_exit < 2.0 + 3.0
        assert answers["bye"]["result"] == {"ok": True} and answers["e3"]["error"]["code"] == -32003
        assert not third.exists() and list(third.parent.glob(".third.partial-*")) == []
    finally:
        b.close()
