"""Checks on the strips before anything is exported, each failure a UserError naming the strip and what
to do. A run starts only from footage the model can use: a movie, image, movie-clip, meta or scene
strip that is not muted, sits on an unmuted channel and has its media on disk.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import bpy

from . import strips

FOOTAGE = ("MOVIE", "IMAGE", "MOVIECLIP", "META", "SCENE")
PICK = "pick a movie, image, meta or scene strip"


class UserError(Exception):
    """A failure the user can fix: message + what to do."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint


def _abspath(strip: Any, path: str) -> str:
    return os.path.normpath(bpy.path.abspath(path, library=strip.id_data.library))


def missing_media(strip: Any) -> Optional[str]:
    """The first file a movie/image strip needs that is not on disk (None: all present)."""
    if strip.type == "MOVIE":
        path = _abspath(strip, strip.filepath)
        return None if os.path.isfile(path) else path
    if strip.type == "IMAGE":
        folder = _abspath(strip, strip.directory)
        for e in strip.elements:
            path = os.path.join(folder, e.filename)
            if not os.path.isfile(path):
                return path
    if strip.type == "MOVIECLIP" and strip.clip is not None:
        path = _abspath(strip, strip.clip.filepath)
        return None if os.path.exists(path) else path
    return None


def _channel_muted(strip: Any) -> bool:
    parent = strips.parent_meta(strip)
    channels = getattr(parent if parent is not None else strip.id_data.sequence_editor, "channels", None)
    return bool(channels is not None and len(channels) > strip.channel and channels[strip.channel].mute)


def check_strip(scene: Any, name: str, role: str) -> Any:
    """The strip called name, checked as the run's `role` ("source"/"driving"); raises UserError."""
    strip = strips.find_strip(scene, name) if name else None
    if strip is None:
        raise UserError(f"{role} strip '{name}' not found" if name else f"no {role} strip",
                        "pick the source strip in the MotionFollower panel (or make it the active strip)"
                        if role == "source" else "pick the strip whose motion the person should follow")
    what = f"{role} strip '{name}'"
    if strip.type == "SOUND":
        raise UserError(f"{what} is a sound strip: it has no pictures", PICK)
    if strip.type not in FOOTAGE:
        raise UserError(f"{what} is a {strip.type.lower()} strip, not footage", PICK)
    node = strip
    while node is not None:
        if node.mute:
            raise UserError(f"{what} is muted" + (f" (its meta strip '{node.name}')" if node is not strip else ""),
                            "unmute it (the eye icon in the sequencer), or pick another strip")
        if _channel_muted(node):
            raise UserError(f"{what} is on muted channel {node.channel}",
                            "unmute the channel (the eye icon in the channel list), or pick another strip")
        node = strips.parent_meta(node)
    if strip.type == "META":
        content = [s for s in strips.meta_children(strip) if s.type != "SOUND" and not s.mute]
        if not content:
            raise UserError(f"{what} has no unmuted picture strips inside", PICK)
        for s in content:
            path = missing_media(s)
            if path:
                raise UserError(f"{what}: '{s.name}' inside it misses its file '{path}'",
                                "relink the media (Strip > Movie Strip > Change Path), or pick another strip")
    elif strip.type == "SCENE":
        if strip.scene is None:
            raise UserError(f"{what} shows no scene", PICK)
        if getattr(strip, "scene_input", "CAMERA") == "CAMERA" and (strip.scene_camera or strip.scene.camera) is None:
            raise UserError(f"{what} shows scene '{strip.scene.name}', which has no camera",
                            "add a camera to that scene, or set the strip's input to Sequencer")
    else:
        path = missing_media(strip)
        if path:
            raise UserError(f"{what} misses its file '{path}' (Blender would show magenta 'missing media' frames)",
                            "relink the media (Strip > Movie Strip > Change Path), or pick another strip")
    return strip


def check_pair(scene: Any, source: str, driving: str) -> None:
    check_strip(scene, source, "source")
    check_strip(scene, driving, "driving")
    if source == driving:
        raise UserError("the source and the driving strip are the same strip", "pick two different strips")


def sources(context: Any) -> list[str]:
    """The source strips of one press of Run: the panel's (or the active strip), or with "All selected
    strips" every selected picture strip but the driving one, in timeline order."""
    scene = strips.vse_scene(context)
    mf, ed = scene.motionfollower, scene.sequence_editor
    if mf.queue_selected and ed is not None:
        picked = sorted((s for s in strips.top_strips(scene) if s.select and s.type in FOOTAGE
                         and s.name != mf.driving_strip), key=lambda s: (s.frame_final_start, s.channel))
        if picked:
            return [s.name for s in picked]
    if mf.source_strip:
        return [mf.source_strip]
    return [ed.active_strip.name] if ed is not None and ed.active_strip is not None else [""]


def plan(context: Any) -> list[str]:
    """sources(), each checked now: a queue fails before its first edit, not in the middle."""
    names = sources(context)
    scene = strips.vse_scene(context)
    for name in names[1:]:
        check_strip(scene, name, "source")
    return names
