"""Where a run's files live, so that results are never lost and dead runs leave nothing behind.

- Scratch: each run works in `<scratch>/<job>/` (exported inputs, the backend's output), `<scratch>`
  being the preferences' job folder or `<system temp>/motionfollower-jobs`. The folder holds
  `owner.json` with Blender's process id; a folder whose owner is dead is stale and removed at the
  next start (`clean_stale`), whatever killed that Blender.
- Results of a saved .blend go to `//motionfollower/<name>/` next to it and the strip points there
  with a relative path: the project folder can be moved or copied as a whole.
- Results of an unsaved .blend stay in the run's scratch folder until the first save, when the
  save_pre handler moves them to `//motionfollower/<name>/` next to the new file (Blender then
  writes the strip's path relative). Never into the add-on's own folder, which Blender deletes
  when the add-on is removed. Nothing a saved .blend references is ever deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import bpy

from . import strips

OWNER = "owner.json"
RESULTS = "motionfollower"  # the folder next to the .blend


class PlaceError(Exception):
    """A folder could not be created or written; the message names it."""


def scratch_root(configured: str = "") -> Path:
    return Path(bpy.path.abspath(configured)) if configured else Path(tempfile.gettempdir()) / "motionfollower-jobs"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # another user's process: not ours to judge
    return True


def new_job_dir(root: Path, name: str) -> Path:
    """A fresh `<root>/<name>_<time>/` owned by this Blender process."""
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"_{int(time.time() * 1000) % 1000:03d}"
    job = Path(root) / f"{name}_{stamp}"
    try:
        job.mkdir(parents=True, exist_ok=False)
        (job / OWNER).write_text(json.dumps({"pid": os.getpid(), "blend": bpy.data.filepath}))
    except OSError as exc:
        raise PlaceError(f"cannot create the job folder '{job}': {exc.strerror or exc}") from exc
    return job


def owner_pid(folder: Path) -> Optional[int]:
    try:
        return int(json.loads((folder / OWNER).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clean_stale(root: Path) -> list[Path]:
    """Remove the job folders under root whose Blender process is gone; returns them."""
    removed = []
    try:
        entries = list(Path(root).iterdir())
    except OSError:
        return removed
    for folder in entries:
        pid = owner_pid(folder) if folder.is_dir() else None
        if pid is not None and not _pid_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def result_dir(blend_path: str, name: str) -> Path:
    """A new `<blend folder>/motionfollower/<name>[_k]/` path (not created)."""
    base = Path(blend_path).resolve().parent / RESULTS
    final, k = base / name, 2
    while final.exists():
        final, k = base / f"{name}_{k}", k + 1
    return final


def check_writable(folder: Path) -> None:
    """Prove that folder (and its parents) can be made and written to; PlaceError names it. The folders
    it had to make go again: a run cancelled or failed later leaves no empty `//motionfollower/`."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".mf-write-test-"):
            pass
    except OSError as exc:
        raise PlaceError(f"cannot write to '{folder}': {exc.strerror or exc}") from exc
    finally:
        _remove_empty(made)


def _remove_empty(folders: Iterable[Path]) -> None:
    """rmdir each (deepest first) while empty: only folders this add-on made, never anything with files."""
    for f in folders:
        try:
            f.rmdir()
        except OSError:  # not empty (something was put there meanwhile) or already gone
            if f.exists():
                return


def place(src: Path, final: Path) -> Path:
    """Move the finished folder src to final (which must not exist): a rename on the same disk, else a
    copy into a hidden sibling renamed into place, so final is either complete or absent."""
    made = [p for p in final.parents if not p.exists()]
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, final)
        return final
    except OSError:
        pass  # another file system
    partial = final.with_name(f".{final.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        shutil.copytree(src, partial)
        os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        _remove_empty(made)  # a failed copy leaves no empty //motionfollower/
        raise
    shutil.rmtree(src, ignore_errors=True)
    return final


def discard_job(job_dir: Path, keep: Iterable[Path] = ()) -> None:
    """Remove a cancelled or failed run's job folder, all but the result folders in keep (an unsaved
    .blend's earlier variations live there until the first save, and strips show them); with those
    its owner.json stays too (the save handler and `clean_stale` find the folder by it)."""
    job_dir = Path(job_dir)
    kept = {Path(k).resolve() for k in keep if Path(k).is_dir()}
    if not kept:
        shutil.rmtree(job_dir, ignore_errors=True)
        return
    try:
        entries = list(job_dir.iterdir())
    except OSError:
        return
    for entry in entries:
        e = entry.resolve()
        if entry.name == OWNER or any(k == e or e in k.parents for k in kept):  # a kept folder or one holding it
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def point_strip(strip: Any, folder: Path) -> None:
    """Point an image strip (or a movie strip's file) at folder: relative to the .blend when it is saved."""
    if strip.type == "MOVIE":
        path = str(folder / Path(bpy.path.abspath(strip.filepath)).name)
        strip.filepath = bpy.path.relpath(path) if bpy.data.filepath else path
        return
    path = str(folder) + os.sep
    strip.directory = bpy.path.relpath(path) if bpy.data.filepath else path


# ---- unsaved files ------------------------------------------------------------------------------

def _image_strips() -> Iterable[Any]:
    for scene in bpy.data.scenes:
        for s in strips.all_strips(scene):
            if s.type in ("IMAGE", "MOVIE"):  # results are frame folders or movies (docs/footage.md)
                yield s


def _owned_job(folder: Path, root: Path) -> Optional[Path]:
    """The job folder of this process that holds folder (a result left in scratch), else None."""
    try:
        rel = folder.resolve().relative_to(root.resolve())
    except ValueError:
        return None
    job = root / rel.parts[0] if rel.parts else None
    return job if job is not None and owner_pid(job) == os.getpid() else None


def adopt_unsaved_results(target_blend: str, root: Path) -> list[Path]:
    """Move every result of this session still in scratch next to target_blend and repoint its strips.
    Called before a save: the file written then references `//motionfollower/...`."""
    moved: dict[Path, Path] = {}
    for s in _image_strips():
        folder = Path(bpy.path.abspath(s.directory if s.type == "IMAGE" else s.filepath)).resolve()
        folder = folder if s.type == "IMAGE" else folder.parent
        if folder not in moved:
            job = _owned_job(folder, root)
            if job is None or not folder.is_dir():
                continue
            moved[folder] = place(folder, result_dir(target_blend, job.name))
            if not any(p.name != OWNER for p in job.iterdir()):
                shutil.rmtree(job, ignore_errors=True)
        if s.type == "IMAGE":
            s.directory = str(moved[folder]) + os.sep  # made relative by Blender's save (relative remap)
        else:
            s.filepath = str(moved[folder] / Path(s.filepath).name)
    return list(moved.values())
