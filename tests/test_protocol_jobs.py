"""Jobs over the protocol: prepare with progress, atomic output; edit cancel/busy (real subprocess)."""

from __future__ import annotations

from conftest import BackendProcess, assert_valid_jsonrpc_line, write_pose_render_clip


def test_prepare_job_reports_progress_and_writes_layout(tmp_path):
    src = write_pose_render_clip(tmp_path / "src", frames=10)
    drv = write_pose_render_clip(tmp_path / "drv", frames=14, phase=1.5)
    out = tmp_path / "job" / "prepared"
    b = BackendProcess()
    events = []
    try:
        b.send({"jsonrpc": "2.0", "id": "p", "method": "prepare",
                "params": {"job_id": "prep-1", "source": str(src), "driving": str(drv), "out": str(out),
                           "mask_predictor": "geometric"}})
        r = b.response("p", timeout=240, on_notification=events.append)
        assert "result" in r, r
        assert r["result"]["job_id"] == "prep-1"
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
