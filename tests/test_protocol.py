"""The JSON-RPC server as a real subprocess: every method, every error path, and hostile input."""

from __future__ import annotations

import json
import random

from conftest import BackendProcess, assert_matches_docs, assert_valid_jsonrpc_line

from mf_backend import PROTOCOL_VERSION
from mf_backend import errors as E


def test_initialize_reports_versions_device_and_weights(backend, tmp_path):
    r = backend.request("initialize", {"protocolVersion": PROTOCOL_VERSION, "models_dir": str(tmp_path)})
    res = r["result"]
    assert res["protocolVersion"] == PROTOCOL_VERSION
    assert res["backendVersion"]
    assert res["device"] in ("cpu", "cuda") and res["dtype"] in ("float32", "float16", "bfloat16")
    assert res["weights"]["models_dir"] == str(tmp_path)
    missing = {m["file"] for m in res["weights"]["missing"]}
    assert {"denoising_unet.pth", "motion_module.pth", "poctr.pth"} <= missing
    assert set(res["capabilities"]["methods"]) == {"initialize", "prepare", "edit", "queue", "cancel", "shutdown"}
    assert_matches_docs("initialize", res)


def test_initialize_with_bad_values_answers_its_id_and_changes_nothing(backend, tmp_path):
    """Bad settings are refused like a job's, answered with the request's id; the server keeps its
    settings (a later initialize and job see none of the refused values)."""
    r = backend.request("initialize", {"threads": 1, "models_dir": str(tmp_path)}, req_id="good")
    assert r["result"]["settings"] == {"threads": 1, "models_dir": str(tmp_path)}
    for i, bad in enumerate([{"device": "tpu", "precision": "fp8"}, {"precision": "fp8"}, {"device": 7},
                             {"threads": -2}, {"threads": "many"}]):
        r = backend.request("initialize", bad, req_id=f"bad{i}")
        assert r["id"] == f"bad{i}" and r["error"]["code"] == E.INVALID_PARAMS, r
        assert next(iter(bad)) in r["error"]["message"]
    r = backend.request("initialize", {}, req_id="after")
    assert r["result"]["settings"] == {"threads": 1, "models_dir": str(tmp_path)}
    assert r["result"]["device"] in ("cpu", "cuda") and r["result"]["dtype"] == (
        "float32" if r["result"]["device"] == "cpu" else r["result"]["dtype"])
    r = backend.request("edit", {"steps": 10}, req_id="job")  # fails on its own missing source, not on 'tpu'
    assert "source" in r["error"]["message"] and "device" not in r["error"]["message"]


def test_cancel_without_job_and_shutdown(backend):
    r = backend.request("cancel", {}, req_id="c1")
    assert r["result"]["cancelled"] is False
    r = backend.request("shutdown", {}, req_id="s1")
    assert r["result"] == {"ok": True}
    assert_matches_docs("shutdown", r["result"])
    assert backend.proc.wait(timeout=20) == 0


def test_eof_on_stdin_stops_the_server(backend):
    backend.proc.stdin.close()
    assert backend.proc.wait(timeout=20) == 0


def test_job_param_errors(backend, tmp_path):
    r = backend.request("edit", {"source": str(tmp_path / "nope.mp4"), "driving": str(tmp_path / "d"),
                                 "out": str(tmp_path / "o")}, req_id=2)
    err = r["error"]
    assert err["code"] == E.BAD_INPUT_MEDIA and "nope.mp4" in err["message"] and err["data"]["hint"]
    r = backend.request("prepare", {"steps": "ten"}, req_id=3)
    assert r["error"]["code"] == E.INVALID_PARAMS and "steps" in r["error"]["message"]
    r = backend.request("edit", {"advanced": {"guidance_semantics": "sideways"}}, req_id=4)
    assert r["error"]["code"] == E.INVALID_PARAMS and "guidance_semantics" in r["error"]["message"]
    for key, params in (("pose_extractor", {"pose_extractor": "bogus"}),  # before any work, the right class
                        ("mask_predictor", {"advanced": {"mask_predictor": "bogus"}})):
        r = backend.request("prepare", {"source": str(tmp_path / "nope.mp4"), "driving": str(tmp_path / "d"),
                                        "out": str(tmp_path / "o"), **params}, req_id=f"bogus-{key}")
        assert r["error"]["code"] == E.INVALID_PARAMS and key in r["error"]["message"], r
    r = backend.request("edit", {"steps": 10}, req_id=5)
    assert r["error"]["code"] == E.INVALID_PARAMS and "source" in r["error"]["message"]
    assert not (tmp_path / "o").exists()


def _hostile_lines() -> list[tuple[bytes, bool]]:
    """(line, expects_response) pairs: at least 200 malformed or hostile inputs."""
    rng = random.Random(1234)
    cases: list[tuple[bytes, bool]] = []
    # invalid JSON
    for s in ["{", "}", "[", "]", "{\"jsonrpc\":", "nul", "tru", "'x'", "{a:1}", "{\"a\":1,}", "[1,2,]",
              "NaN", "Infinity", "-Infinity", "{\"id\":NaN}", "\"unterminated", "{\"jsonrpc\":\"2.0\" \"id\":1}",
              "0x10", "01", "{\"method\":\"initialize\"", "\\u0000", "{}{}", "1 2", "--", "#comment"]:
        cases.append((s.encode(), True))
    # binary garbage (no newlines inside), invalid UTF-8
    for _ in range(60):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))).replace(b"\n", b"")
        if blob.strip():
            try:
                json.loads(blob.decode("utf-8"))
                continue  # extremely unlikely, but then it isn't garbage
            except Exception:
                cases.append((blob, True))
    cases.append((b"\xff\xfe{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\"}", True))
    # valid JSON that is not a request object
    for s in ["1", "-5.5", "\"str\"", "null", "true", "false", "[]", "[1,2]", "[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"cancel\"}]", "{}"]:
        cases.append((s.encode(), True))
    # deep nesting
    cases.append((b"[" * 100000, True))
    cases.append((b"{\"a\":" * 50000 + b"1" + b"}" * 50000, True))
    # bad envelopes
    bad = [
        {"jsonrpc": "1.0", "id": 1, "method": "initialize"},
        {"jsonrpc": 2.0, "id": 1, "method": "initialize"},
        {"id": 1, "method": "initialize"},
        {"jsonrpc": "2.0", "id": 1, "method": 123},
        {"jsonrpc": "2.0", "id": 1, "method": None},
        {"jsonrpc": "2.0", "id": 1, "method": ["initialize"]},
        {"jsonrpc": "2.0", "id": 1},
        {"jsonrpc": "2.0", "id": 1.5, "method": "initialize"},
        {"jsonrpc": "2.0", "id": True, "method": "initialize"},
        {"jsonrpc": "2.0", "id": {"a": 1}, "method": "initialize"},
        {"jsonrpc": "2.0", "id": [1], "method": "initialize"},
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": "x"},
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": 5},
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": [1, 2]},
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"models_dir": 5}},
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"device": ["cuda"]}},
        {"jsonrpc": "2.0", "id": 1, "method": "cancel", "params": "now"},
    ]
    for obj in bad:
        cases.append((json.dumps(obj).encode(), True))
    # unknown methods (with ids: answered; without: silent)
    names = ["foo", "", " ", "INITIALIZE", "rpc.discover", "edit ", "prepare\u0000", "\u00e9dit", "x" * 5000,
             "__init__", "shutdown2", "tools/list", "notifications/initialized", "../../etc/passwd"]
    for i, name in enumerate(names):
        cases.append((json.dumps({"jsonrpc": "2.0", "id": f"u{i}", "method": name}).encode(), True))
        cases.append((json.dumps({"jsonrpc": "2.0", "method": name}).encode(), False))
    # wrong parameter types for the job methods
    wrong = [("steps", "ten"), ("steps", 1.5), ("steps", True), ("steps", None), ("steps", -1), ("steps", 10**9),
             ("seed", "x"), ("guidance_scale", "high"), ("guidance_scale", [1]), ("size", 33), ("size", 0),
             ("camera", "True"), ("camera", 1), ("window", 64), ("overlap", -1), ("align", "sideways"),
             ("timing", "pingpong"), ("crop", 1), ("device", "tpu"), ("precision", "fp8"), ("source", 5),
             ("out", ["a"]), ("w_fg", "4"), ("use_fg", "yes"), ("low_memory", 1), ("frame_start", "a"),
             ("models_dir", 7), ("estimator_weights", "both"), ("advanced", "x"), ("advanced", {"w_fg": "4"}),
             ("advanced", {"window": 64}), ("advanced", {"mask_predictor": "bogus"}), ("pose_extractor", "bogus")]
    for i, (key, value) in enumerate(wrong):
        for method in ("edit", "prepare"):
            cases.append((json.dumps({"jsonrpc": "2.0", "id": f"w{method}{i}", "method": method,
                                      "params": {key: value}}).encode(), True))
    # notifications that expect no answer (job methods are ignored as notifications)
    for method in ("initialize", "edit", "prepare", "cancel", "progress", "nonexistent"):
        for params in ({}, {"x": 1}, "bad"):
            cases.append((json.dumps({"jsonrpc": "2.0", "method": method, "params": params}).encode(), False))
    # responses sent by the client (ignored)
    cases.append((b'{"jsonrpc":"2.0","id":9,"result":{}}', False))
    cases.append((b'{"jsonrpc":"2.0","id":9,"error":{"code":1,"message":"x"}}', False))
    # control characters and huge numbers
    cases.append((b'{"jsonrpc":"2.0","id":1e999,"method":"initialize"}', True))
    cases.append((b'{"jsonrpc":"2.0","id":' + b"9" * 5000 + b',"method":"nope"}', True))
    cases.append((b"\t\x0b\x0c{", True))
    return cases


def test_hostile_input_never_kills_the_server():
    cases = _hostile_lines()
    assert len(cases) >= 200
    b = BackendProcess()
    try:
        for i, (line, expects) in enumerate(cases):
            b.send_raw(line + b"\n")
            if expects:
                msg = assert_valid_jsonrpc_line(b.lines.get(timeout=30))
                assert "error" in msg, (line[:200], msg)
                assert msg["error"]["code"] in (E.PARSE_ERROR, E.INVALID_REQUEST, E.METHOD_NOT_FOUND,
                                                E.INVALID_PARAMS, E.BAD_INPUT_MEDIA), (line[:200], msg)
        # oversized line (over the 4 MiB cap) is consumed and answered, then the server goes on
        b.send_raw(b'{"jsonrpc":"2.0","id":"big","method":"initialize","params":{"x":"' + b"a" * (5 * 1024 * 1024) + b'"}}\n')
        msg = assert_valid_jsonrpc_line(b.lines.get(timeout=60))
        assert msg["error"]["code"] == E.INVALID_REQUEST
        # still alive and answering correctly; no stray answers to the notifications came before this
        r = b.request("initialize", {}, req_id="final")
        assert r["result"]["protocolVersion"] == PROTOCOL_VERSION
        assert b.lines.empty()
        for line in b.raw_stdout:
            assert_valid_jsonrpc_line(line)
        assert b.proc.poll() is None
    finally:
        b.close()
    assert b.proc.returncode == 0, b.stderr[-2000:]


def test_error_codes_are_specific():
    b = BackendProcess()
    try:
        b.send_raw(b"{not json\n")
        assert b.next_message()["error"]["code"] == E.PARSE_ERROR
        b.send_raw(b'{"jsonrpc":"2.0","id":7,"method":"nope"}\n')
        m = b.next_message()
        assert m["id"] == 7 and m["error"]["code"] == E.METHOD_NOT_FOUND
        b.send_raw(b'{"jsonrpc":"2.0","id":8,"method":"initialize","params":[1]}\n')
        m = b.next_message()
        assert m["id"] == 8 and m["error"]["code"] == E.INVALID_PARAMS
        b.send_raw(b'[1]\n')
        m = b.next_message()
        assert m["id"] is None and m["error"]["code"] == E.INVALID_REQUEST
    finally:
        b.close()
