"""File helpers every job shares: the output-folder rule and atomic output.

A low module (it imports only `errors`), so jobs, model saving and the synthetic-pair writer can all use
it without importing each other.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Iterator

from mf_backend.errors import InvalidParams

log = logging.getLogger(__name__)

OWNER_FILE = ".mf-owner"  # inside a temporary output: "host pid" of the process writing it


def frame_pattern(count: int, ext: str = ".png") -> str:
    """Zero-padded frame file names (at least 4 digits, as Blender's ####), so every tool sorts them in order."""
    return "frame_{k:0%dd}%s" % (max(4, len(str(max(count - 1, 0)))), ext)


def check_output_free(out: Path) -> None:
    """The one output-folder rule: `out` must not exist, or be an empty folder (nothing of the user's is
    ever overwritten)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidParams(f"output '{out}' already exists and is not empty",
                            "choose a new output folder; nothing of yours is overwritten")


def remove_stale_partials(parent: Path) -> list[Path]:
    """Remove the temporary outputs (`.*.partial-*`) that a dead process of this host left in `parent`
    (e.g. after kill -9); those of live processes and of other hosts are left alone."""
    removed = []
    host = socket.gethostname()
    for tmp in Path(parent).glob(".*.partial-*"):
        try:
            owner_host, pid = (tmp / OWNER_FILE).read_text().split()
            if owner_host != host or _alive(int(pid)):
                continue
        except (OSError, ValueError):
            continue  # not ours (no owner file): leave it
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
        log.info("removed %s, left by a run that died (pid %s)", tmp, pid)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True


@contextlib.contextmanager
def atomic_output_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it to `final` only if the block succeeds.

    Never overwrites the user's data: `final` must pass `check_output_free`. On any error (cancellation
    included) the temporary folder is removed and `final` is left as it was. Folders get the normal
    permissions of the user's umask; errors name `final`, never the temporary folder.
    """
    final = Path(final).expanduser().resolve()
    check_output_free(final)
    tmp = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(final.parent)
        tmp.mkdir()  # mode 0777 & ~umask, like any folder the user makes
        (tmp / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}")
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InvalidParams(f"cannot write the output folder '{final}': {exc.strerror or exc}",
                            "choose an output folder on a disk you can write to") from exc
    try:
        yield tmp
        (tmp / OWNER_FILE).unlink()
        if final.exists():
            final.rmdir()  # empty, checked above
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if str(tmp) in str(exc.filename or "") or str(final) in str(exc.filename or ""):
            raise InvalidParams(f"writing '{final}' failed: {exc.strerror or exc}",
                                "check the disk's free space and permissions; nothing was left behind") from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
