"""The add-on's backend client (blender_addon/client.py, no bpy) against the real backend subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "blender_addon"))  # client.py is pure Python: import it without bpy

import client as mfclient  # noqa: E402
import config as mfconfig  # noqa: E402


def _client(**kw) -> mfclient.BackendClient:
    return mfclient.BackendClient(sys.executable, repo=str(REPO), **kw).start()


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in state  # a zombie has exited; only its entry is left for the reaper


def test_config_file_format_and_search_order(tmp_path, monkeypatch):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"python": "/opt/venv/bin/python", "repo": "/opt/mf", "models_dir": None}))
    monkeypatch.setenv("MF_BACKEND_CONFIG", str(cfg))
    c = mfconfig.load_config()
    assert (c.python, c.repo, c.models_dir, c.source) == ("/opt/venv/bin/python", "/opt/mf", None, str(cfg))
    cfg.write_text("{broken")  # a broken file is skipped, the next one in the order is used
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    c = mfconfig.load_config()
    assert c.source != str(cfg)
    assert mfconfig.config_paths()[0] == cfg


def test_initialize_progressless_requests_and_clean_shutdown(tmp_path):
    log = tmp_path / "backend.log"
    c = _client(log_path=str(log))
    try:
        info = c.initialize()
        assert info["protocolVersion"].startswith("1.") and info["device"] in ("cpu", "cuda")
        assert "edit" in info["capabilities"]["methods"]
        with pytest.raises(mfclient.BackendError) as e:
            c.request("edit", {"source": str(tmp_path / "nope"), "driving": str(tmp_path), "out": str(tmp_path / "o")})
        assert e.value.code == -32002 and "nope" in e.value.message and e.value.hint
        with pytest.raises(mfclient.BackendError) as e:
            c.request("no_such_method")
        assert e.value.code == -32601
    finally:
        c.close()
    assert c.proc.returncode == 0 and not c.alive


def test_dead_backend_fails_waiting_requests_and_jobs(tmp_path):
    c = _client()
    try:
        c.initialize()
        os.kill(c.pid, signal.SIGSTOP)  # freeze it so the next request is certainly still waiting
        job = c.start_job("edit", {"source": str(tmp_path), "driving": str(tmp_path), "out": str(tmp_path / "o")})
        waiter: dict = {}
        t = threading.Thread(target=lambda: waiter.setdefault("exc", _catch(lambda: c.request("initialize", timeout=30))))
        t.start()
        time.sleep(0.3)
        assert not job.finished
        os.killpg(c.pid, signal.SIGKILL)
        assert job.wait(15), "the job must end when the backend dies"
        t.join(15)
        assert isinstance(job.error, mfclient.BackendDied) and "signal 9" in job.error.message
        assert isinstance(waiter["exc"], mfclient.BackendDied)
        assert not c.alive
        with pytest.raises(mfclient.BackendDied):
            c.request("initialize", timeout=5)
    finally:
        c.kill()


def _catch(fn):
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001
        return exc
    return None


def test_kill_reaches_the_whole_process_tree(tmp_path):
    # A sitecustomize in the backend's PYTHONPATH starts a grandchild, as torch/dataloader workers would.
    hook = tmp_path / "hook"
    hook.mkdir()
    pidfile = tmp_path / "child.pid"
    (hook / "sitecustomize.py").write_text(
        "import os, subprocess, sys\n"
        "if 'MF_TEST_GRANDCHILD' not in os.environ:  # the grandchild must not run this again\n"
        "    p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],\n"
        "                         env={**os.environ, 'MF_TEST_GRANDCHILD': '1'})\n"
        f"    open({str(pidfile) + '.tmp'!r}, 'w').write(str(p.pid))\n"
        f"    os.replace({str(pidfile) + '.tmp'!r}, {str(pidfile)!r})\n")
    c = _client(env={"PYTHONPATH": str(hook)})
    try:
        c.initialize()
        child = int(pidfile.read_text())
        assert not _gone(child)
        c.kill()
        deadline = time.monotonic() + 10
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(child), "the backend's own child must die with it"
        assert not c.alive
    finally:
        c.kill()


def test_missing_python_is_an_actionable_error(tmp_path):
    with pytest.raises(mfclient.BackendError) as e:
        mfclient.BackendClient(str(tmp_path / "no-python")).start()
    assert "no-python" in e.value.message and "install.py" in e.value.hint


def test_a_python_without_the_backend_packages_says_so(tmp_path):
    """Not the out-of-memory hint: which interpreter lacks the packages and what to do."""
    bare = Path(sys.base_prefix) / "bin" / "python3"
    probe = subprocess.run([str(bare), "-c", "import torch"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip(f"{bare} has torch: no bare interpreter to try")
    c = mfclient.BackendClient(str(bare), repo=str(REPO)).start()
    with pytest.raises(mfclient.BackendDied) as e:
        c.initialize(timeout=60)
    assert "No module named" in e.value.message and "install.py" in e.value.hint and "memory" not in e.value.hint
    assert str(bare) in e.value.hint
