"""Connecting to Ray and reserving GPUs before any work starts.

`local` starts a single-node cluster on this machine that listens on 127.0.0.1 only (Ray binds the
node IP, so the loopback address is forced before Ray is imported) with token authentication on
(Ray's default for local clusters since 2.59; never turned off here) and N logical GPUs, so the
scale-out paths run and are tested on a machine without GPUs. `auto` and HOST:PORT join an existing
cluster (`ray start --head ...`, or the cluster of a `ray job submit`).
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any, Optional

from mf_backend.errors import ClusterTooSmall, InvalidParams

log = logging.getLogger(__name__)

LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # latents only travel: a small store keeps a shared machine safe
READY_TIMEOUT_S = 60.0  # how long a placement group may wait for its GPUs before the job fails


def _not_installed() -> InvalidParams:
    return InvalidParams("Ray is not installed in the backend's environment",
                         "run `python install.py --with-ray` (or pip install 'ray[default]')")


def _ray():
    """Import Ray with a clear error when the optional extra is missing."""
    try:
        import ray
    except ModuleNotFoundError as exc:
        raise _not_installed() from exc
    return ray


def require_ray() -> None:
    """The same error as `_ray`, without the seconds an import of Ray takes (checked before a job starts)."""
    if importlib.util.find_spec("ray") is None:
        raise _not_installed()


def check_address(address: Any) -> None:
    if not isinstance(address, str) or (address not in ("local", "auto") and ":" not in address):
        raise InvalidParams(f"ray_address must be local, auto or HOST:PORT; got {address!r}",
                            "e.g. 10.0.0.5:6379 (--ray-address on the command line)")


def _init_in_keeper(ray, **kwargs: Any) -> None:
    """ray.init in a thread that lives as long as the process: Ray starts a local cluster's processes with
    PR_SET_PDEATHSIG, which kills them when the *thread* that started them ends. A server's job thread
    ends with its job, and the next job would wait on a dead cluster."""
    started: "queue.Queue[Optional[BaseException]]" = queue.Queue()

    def keep() -> None:
        try:
            ray.init(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
            started.put(exc)
            return
        started.put(None)
        threading.Event().wait()  # forever; a daemon thread does not hold the process up

    threading.Thread(target=keep, name="ray-local", daemon=True).start()
    error = started.get()
    if error is not None:
        raise error


def connect(address: str, gpus: int) -> dict[str, Any]:
    """Join (or start, for "local") the cluster; returns its resources. Idempotent within a process."""
    global _local_node
    loopback = address == "local" or address.split(":")[0] in ("127.0.0.1", "localhost")
    if loopback:
        # Ray resolves 127.0.0.1 to the machine's routable IP unless this is off (its macOS/Windows
        # behaviour): the variable for the Ray processes started here, the constant in case Ray was
        # imported before it was set. A local cluster's bound address is checked below either way.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray = _ray()
    if loopback:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    if not ray.is_initialized():
        if address == "local":
            _init_in_keeper(ray, address="local", num_gpus=gpus, num_cpus=max(gpus, os.cpu_count() or 1),
                            include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES, log_to_driver=False)
            _local_node = ray._private.worker._global_node
            atexit.register(stop_local)
            gcs = ray.get_runtime_context().gcs_address
            if not gcs.startswith("127.0.0.1:"):
                ray.shutdown()
                raise InvalidParams(f"the local Ray cluster bound {gcs}, not 127.0.0.1 (it was stopped)",
                                    "start a cluster yourself (ray start --head) and pass --ray-address HOST:PORT")
        else:
            check_address(address)
            if address != "auto":  # Ray turns token auth on from a token file only for clusters it finds
                # itself; the same for an explicit address (an explicit RAY_AUTH_MODE still wins)
                from ray._private.authentication.authentication_token_setup import (
                    maybe_enable_token_auth_if_token_available)

                maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
            ray.init(address=address, log_to_driver=False)
    return ray.cluster_resources()


def _children(pids: set[int]) -> set[int]:
    out = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) in pids:
                out.add(int(proc.name))
        except (OSError, ValueError, IndexError):
            pass
    return out


_local_node = None  # the Ray node of a local cluster this process started


def stop_local(graceful: bool = True) -> None:
    """Stop the local cluster this process started, if any (`graceful`: ray.shutdown first), then kill
    what is left of it: Ray leaves the raylet's dashboard and runtime-env agents running after
    ray.shutdown and after os._exit (as `serve` ends). Called at exit."""
    global _local_node
    node, _local_node = _local_node, None
    if node is None:
        return
    own = {p.process.pid for procs in node.all_processes.values() for p in procs}
    pids = own | _children({p.process.pid for p in node.all_processes.get("raylet", [])})
    if graceful:
        _ray().shutdown()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass  # gone already


def reserve_gpus(n: int, timeout_s: float = READY_TIMEOUT_S):
    """A placement group of n bundles {GPU: 1, CPU: 1}, ready (all n start together) or ClusterTooSmall."""
    ray = _ray()
    from ray.util.placement_group import placement_group, remove_placement_group

    have = ray.cluster_resources().get("GPU", 0)
    if have < n:
        raise ClusterTooSmall(f"the Ray cluster has {have:g} GPUs; this job needs {n}",
                              "pass --workers with at most the cluster's GPU count, or add GPU nodes")
    pg = placement_group([{"GPU": 1, "CPU": 1}] * n, strategy="PACK")
    t0 = time.monotonic()
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        free = ray.available_resources().get("GPU", 0)
        raise ClusterTooSmall(f"{n} GPUs were not free within {timeout_s:.0f} s ({free:g} free now)",
                              "wait for other jobs to finish or use fewer --workers")
    log.info("reserved %d GPUs in %.2f s", n, time.monotonic() - t0)
    return pg


def release(pg, actors: list) -> None:
    """Kill the actors and free their GPUs (every exit path of a job goes through here)."""
    ray = _ray()
    from ray.util.placement_group import remove_placement_group

    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead
            pass
    if pg is not None:
        remove_placement_group(pg)


def actor_options(pg, index: int) -> dict[str, Any]:
    """Options of the actor that owns bundle `index` of `pg`: one GPU, no restarts (a lost worker
    fails the job; the queue retries whole jobs)."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {"num_gpus": 1, "num_cpus": 1, "max_restarts": 0,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index)}
