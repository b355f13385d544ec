"""VSE strips: export a strip's frames to a folder at the depth of its media, import the result (image
sequence or movie, in its colour space); the 4.2↔5.x shim.

Export renders the strip through the sequencer, so the strip's own media comes out as the user
sees it: offsets and trims, retiming (speed), transform/crop, modifiers and the scene's fps. It
renders a temporary *copy* of the scene (Scene.copy() duplicates the sequencer but links everything
else) with every other strip muted, the strip at full opacity with its blend mode Alpha Over and no
animation (fades), and the view transform set to Standard, then removes the copy: the user's scene,
its colour management and its frame range are never touched. What the copy drops besides opacity
and fades (other animated properties) is listed in `StripExport.dropped` for a warning.

The frames keep the precision of the strip's media (`export_depth`): 8-bit media → 8-bit sRGB PNG (as the
Standard view shows it), 16-bit PNG/TIFF and >8-bit movies → 16-bit sRGB PNG, EXR and scene-linear strips →
scene-linear Rec.709 EXR (half, or float when the media is float or 16-bit linear), so the backend's
`output_format="auto"` answers in the same depth and the pixels outside the edit keep their values.

API drift handled here (and only here): `strips`/`strips_all` (4.4+) vs `sequences`/`sequences_all`
(≤4.3, removed in 5.0), `context.sequencer_scene` (5.x), meta strips' `strips`/`sequences`, layered actions (5.x).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import bpy

from .depth import FORMATS, deepest, media_depth

FRAME_RE = re.compile(r"(\d+)")


# ---- the shim ----------------------------------------------------------------------------------

def vse_scene(context: Any) -> "bpy.types.Scene":
    """The scene the sequencer shows: `context.sequencer_scene` on 5.x when set, else `context.scene`."""
    return getattr(context, "sequencer_scene", None) or context.scene


def top_strips(scene: "bpy.types.Scene") -> Iterable[Any]:
    ed = scene.sequence_editor
    if ed is None:
        return []
    coll = getattr(ed, "strips", None)
    return coll if coll is not None else ed.sequences


def all_strips(scene: "bpy.types.Scene") -> Iterable[Any]:
    ed = scene.sequence_editor
    if ed is None:
        return []
    coll = getattr(ed, "strips_all", None)
    return coll if coll is not None else ed.sequences_all


def top_collection(scene: "bpy.types.Scene") -> Any:
    ed = scene.sequence_editor or scene.sequence_editor_create()
    coll = getattr(ed, "strips", None)
    return coll if coll is not None else ed.sequences


def find_strip(scene: "bpy.types.Scene", name: str) -> Optional[Any]:
    for s in all_strips(scene):
        if s.name == name:
            return s
    return None


def strip_names(scene: "bpy.types.Scene") -> list[str]:
    return [s.name for s in all_strips(scene)]


def meta_children(strip: Any) -> list[Any]:
    """The strips directly inside a meta strip (`strips` on 4.4+, `sequences` before)."""
    coll = getattr(strip, "strips", None)
    return list(coll if coll is not None else getattr(strip, "sequences", ()))


def descendants(strip: Any) -> list[Any]:
    out = []
    for s in meta_children(strip) if strip.type == "META" else ():
        out += [s, *descendants(s)]
    return out


def visible_range(strip: Any) -> tuple[int, int]:
    """[first, end) timeline frames where the strip shows."""
    return int(strip.frame_final_start), int(strip.frame_final_end)


def content_range(strip: Any) -> tuple[int, int]:
    """[first, end) frames with pictures: the visible range, for a meta cut to its unmuted picture strips
    (a meta stretched past its content would add black frames)."""
    first, end = visible_range(strip)
    if strip.type == "META":
        inner = [visible_range(s) for s in meta_children(strip) if s.type != "SOUND" and not s.mute]
        if inner:
            first, end = max(first, min(a for a, _ in inner)), min(end, max(b for _, b in inner))
    return first, end


def export_depth(strip: Any) -> str:
    """The depth that keeps the strip's media (depth.FORMATS); a meta: what keeps all its content."""
    if strip.type != "META":
        return media_depth(strip)
    return deepest({export_depth(s) for s in meta_children(strip) if s.type != "SOUND" and not s.mute})


def _fcurves(action: Any) -> list[Any]:
    """An action's F-curves: `Action.fcurves` up to 4.x, channel bags of layered actions on 5.x."""
    legacy = getattr(action, "fcurves", None)
    if legacy is not None:
        return list(legacy)
    return [fc for layer in getattr(action, "layers", ()) for st in layer.strips
            for bag in getattr(st, "channelbags", ()) for fc in bag.fcurves]


def animated_paths(scene: "bpy.types.Scene", strip: Any) -> list[str]:
    """The strip's animated properties the export drops, other than opacity and volume (fades)."""
    ad = scene.animation_data
    if ad is None or ad.action is None:
        return []
    key = f'["{strip.name}"].'
    return sorted({fc.data_path.split(key, 1)[1] for fc in _fcurves(ad.action) if key in fc.data_path
                   and fc.data_path.split(key, 1)[1] not in ("blend_alpha", "volume")})


def parent_meta(strip: Any) -> Optional[Any]:
    fn = getattr(strip, "parent_meta", None)
    return fn() if callable(fn) else None


def top_level_of(strip: Any) -> Any:
    """The top-level strip that contains `strip` (itself, or its outermost meta)."""
    while parent_meta(strip) is not None:
        strip = parent_meta(strip)
    return strip


# ---- export ------------------------------------------------------------------------------------

class ExportError(Exception):
    pass


TMP_SCENE = "MF export (temporary)"


class StripExport:
    """Render one strip alone over its visible range (∩ frame_range, [a, b)) to folder/frame_{k}.png|exr,
    a few frames per `render` call, so that the UI's modal timer can run between calls.
    keep_depth: write at the strip's `export_depth` (the source); False: 8-bit PNG (the driving strip's poses).

    The temporary scene copy lives from __init__ to close(); call close() in every case (finish() does).
    """

    def __init__(self, scene: "bpy.types.Scene", strip_name: str, folder: Path,
                 frame_range: Optional[tuple[int, int]] = None, keep_depth: bool = True):
        strip = find_strip(scene, strip_name)
        if strip is None:
            raise ExportError(f"strip '{strip_name}' not found in scene '{scene.name}'")
        first, end = content_range(strip)
        if frame_range is not None:
            first, end = max(first, frame_range[0]), min(end, frame_range[1])
        if end <= first:
            raise ExportError(f"strip '{strip_name}' shows no frames in the chosen frame range")
        self.strip_name, self.first, self.total, self.done = strip_name, first, end - first, 0
        self.frame_s: Optional[float] = None  # seconds per frame, measured by render()
        self.dropped = animated_paths(scene, strip)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.render_dir = self.folder / ".render"
        self._had_render_result = "Render Result" in bpy.data.images
        self.depth = export_depth(strip) if keep_depth else "8"
        tmp = _export_scene(scene, strip, self.render_dir, self.depth)
        self._tmp_name: Optional[str] = tmp.name  # None once closed
        self.fps = tmp.render.fps / tmp.render.fps_base
        self.width, self.height = tmp.render.resolution_x, tmp.render.resolution_y

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    def render(self, max_frames: int) -> int:
        """Render the next min(max_frames, left) frames; returns how many."""
        n = max(1, min(int(max_frames), self.total - self.done))
        if self._tmp_name is None:
            raise ExportError(f"the export of '{self.strip_name}' was closed")
        tmp = bpy.data.scenes.get(self._tmp_name)  # by name: an undo between two slices replaces the data
        if tmp is None:
            raise ExportError(f"the temporary scene exporting '{self.strip_name}' was removed (an undo while "
                              "exporting?); run the edit again")
        a = self.first + self.done
        # frame_end first: Blender drags one end along when the other passes it
        tmp.frame_end = max(tmp.frame_end, a + n - 1)
        tmp.frame_start, tmp.frame_end = a, a + n - 1
        t0 = time.monotonic()
        result = bpy.ops.render.render(animation=True, scene=tmp.name)
        if "FINISHED" not in result:
            raise ExportError(f"rendering strip '{self.strip_name}' failed ({result})")
        self.frame_s = (time.monotonic() - t0) / n
        self.done += n
        return n

    def finish(self) -> dict[str, Any]:
        """After the last frame: rename to frame_{k}.png|exr, drop the copy. Returns
        {"first": timeline frame of frame_0, "count": n, "fps": float, "width": w, "height": h, "depth": a key of
        FORMATS, "colorspace": the frames' colour space (PNG: display sRGB, the Standard view; EXR: Linear Rec.709)}."""
        self.close()
        _, _, ext, colorspace = FORMATS[self.depth]
        rendered = sorted(self.render_dir.glob(f"f_*{ext}"), key=lambda p: int(FRAME_RE.findall(p.stem)[-1]))
        if len(rendered) != self.total:
            raise ExportError(f"expected {self.total} frames of '{self.strip_name}', the render wrote {len(rendered)}")
        for k, p in enumerate(rendered):
            os.replace(p, self.folder / f"frame_{k}{ext}")
        shutil.rmtree(self.render_dir, ignore_errors=True)
        return {"first": self.first, "count": self.total, "fps": self.fps, "width": self.width, "height": self.height,
                "depth": self.depth, "colorspace": colorspace}

    def close(self) -> None:
        """Remove the temporary scene (and a Render Result the export created). Safe to call twice."""
        if self._tmp_name is not None:
            tmp = bpy.data.scenes.get(self._tmp_name)
            self._tmp_name = None
            if tmp is not None:
                bpy.data.scenes.remove(tmp)
        if not self._had_render_result and "Render Result" in bpy.data.images:
            bpy.data.images.remove(bpy.data.images["Render Result"])


def _export_scene(scene: "bpy.types.Scene", strip: Any, render_dir: Path, depth: str = "8") -> "bpy.types.Scene":
    """A copy of `scene` that renders only `strip` (and the metas holding it) as plain frames in FORMATS[depth]."""
    inside = {s.name for s in descendants(strip)}  # a meta's content renders as the user set it up
    keep = {strip.name}
    parent = parent_meta(strip)
    while parent is not None:  # a strip inside a meta renders only through its metas
        keep.add(parent.name)
        parent = parent_meta(parent)

    tmp = scene.copy()  # links objects/world, duplicates the sequencer: the user's scene stays as it is
    try:
        tmp.name = TMP_SCENE
        for s in all_strips(tmp):
            if s.name in keep:
                s.mute = False
            elif s.name not in inside:
                s.mute = True
        own = find_strip(tmp, strip.name)
        own.mute = False
        own.blend_alpha, own.blend_type = 1.0, "ALPHA_OVER"  # its own pictures, not blended with black
        for ch in getattr(tmp.sequence_editor, "channels", ()):
            ch.mute = False  # muted channels were refused by inputs.check_strip; other strips are muted
        for s in all_strips(tmp):
            if s.type == "META" and hasattr(s, "channels"):
                for ch in s.channels:
                    ch.mute = False
        tmp.animation_data_clear()  # fades animate blend_alpha; the user's action stays as it is
        r = tmp.render
        r.use_sequencer = True
        r.use_compositing = False
        r.resolution_percentage = 100
        r.use_border = False
        r.film_transparent = False
        r.filepath = str(render_dir / "f_")
        r.use_file_extension = True
        r.use_overwrite = True
        r.use_placeholder = False
        im = r.image_settings
        if hasattr(im, "media_type"):  # 5.0 groups formats by media type
            im.media_type = "IMAGE"
        im.file_format, im.color_depth = FORMATS[depth][:2]
        im.color_mode = "RGB"
        if im.file_format == "PNG":
            im.compression = 15
        else:  # EXR is written scene-linear; a linear sequencer space makes float strips round-trip exactly
            im.exr_codec = "ZIP"  # lossless
            tmp.sequencer_colorspace_settings.name = FORMATS[depth][3]
            for s in [own, *descendants(own)]:
                if hasattr(s, "use_float"):  # in a linear sequencer 5.0 skips a byte strip's own colour space
                    s.use_float = True
        # Frames for a model: no tone mapping (AgX/Filmic would change every pixel).
        tmp.view_settings.view_transform = "Standard"
        tmp.view_settings.look = "None"
        tmp.view_settings.exposure = 0.0
        tmp.view_settings.gamma = 1.0
        tmp.view_settings.use_curve_mapping = False
        tmp.sequence_editor.use_prefetch = False
    except BaseException:
        bpy.data.scenes.remove(tmp)
        raise
    return tmp


def export_strip(scene: "bpy.types.Scene", strip_name: str, folder: Path,
                 frame_range: Optional[tuple[int, int]] = None, keep_depth: bool = True) -> dict[str, Any]:
    """The whole export in one call (scripts, tests): see StripExport."""
    export = StripExport(scene, strip_name, folder, frame_range, keep_depth)
    try:
        export.render(export.total)
        return export.finish()
    finally:
        export.close()


# ---- import ------------------------------------------------------------------------------------

def frame_files(folder: Path, ext: str = ".png") -> list[Path]:
    """Image files with extension `ext` of a folder in frame order (frame_0, frame_1, …, frame_10)."""
    files = [p for p in Path(folder).iterdir() if p.suffix.lower() == ext]
    return sorted(files, key=lambda p: (int(FRAME_RE.findall(p.stem)[-1]) if FRAME_RE.findall(p.stem) else -1, p.name))


def first_free_channel(scene: "bpy.types.Scene", above: int, start: int, end: int) -> int:
    """Lowest channel > above with no top-level strip overlapping [start, end)."""
    busy = {s.channel for s in top_strips(scene) if s.frame_final_start < end and s.frame_final_end > start}
    channel = above + 1
    while channel in busy:
        channel += 1
    if channel > 128:
        raise ExportError("no free channel above the source strip (the sequencer has 128)")
    return channel


def import_frames(scene: "bpy.types.Scene", folder: Path, name: str, source_name: str, first_frame: int,
                  metadata: Optional[dict[str, Any]] = None, output: Optional[dict[str, Any]] = None) -> Any:
    """Add the backend's result in `folder` above `source_name`, starting at first_frame: an image-sequence
    strip (PNG, EXR) or a movie strip (ProRes, DNxHR, H.264), in the colour space the backend wrote.

    `output` is the edit result's "output" entry (format, movie, frame_pattern, blender_colorspace, fps,
    timecode; docs/footage.md); without it the folder's PNGs are taken as sRGB."""
    output = output or {}
    ext = Path(output.get("frame_pattern") or "frame_{k}.png").suffix.lower()
    movie = Path(folder) / output["movie"] if output.get("movie") else None
    files = [] if movie else frame_files(folder, ext)
    if movie is None and not files:
        raise ExportError(f"the backend wrote no frames in '{folder}'")
    if movie is not None and not movie.is_file():
        raise ExportError(f"the backend's movie '{movie}' is missing")
    source = find_strip(scene, source_name)
    base = top_level_of(source) if source is not None else None
    above = base.channel if base is not None else 0
    count = int(output.get("frames") or len(files))
    channel = first_free_channel(scene, above, first_frame, first_frame + count)
    ed = scene.sequence_editor
    prefetch = ed.use_prefetch
    ed.use_prefetch = False  # the prefetch thread must not read strips while we add one
    try:
        coll = top_collection(scene)
        if movie is not None:
            strip = coll.new_movie(name=name, filepath=str(movie), channel=channel, frame_start=first_frame,
                                   fit_method="FIT")
        else:
            strip = coll.new_image(name=name, filepath=str(files[0]), channel=channel,
                                   frame_start=first_frame, fit_method="FIT")
            for f in files[1:]:
                strip.elements.append(f.name)
            strip.frame_final_duration = len(files)
        set_colorspace(strip, output.get("blender_colorspace") or "sRGB")
        if output.get("matte") == "alpha":  # the matte: RGB is the whole frame, not premultiplied
            strip.alpha_mode = "STRAIGHT"
        extra = {"fps": "/".join(map(str, output["fps"])) if output.get("fps") else None,
                 "timecode": output.get("timecode"), "format": output.get("format")}
        for key, value in {**(metadata or {}), **extra}.items():
            if isinstance(value, (int, float, str)):
                strip["motionfollower_" + key] = value
    finally:
        ed.use_prefetch = prefetch
    return strip


def set_colorspace(strip: Any, name: str) -> None:
    """Set the strip's colour space; a name Blender's config lacks keeps Blender's guess (noted on the strip)."""
    try:
        strip.colorspace_settings.name = name
    except TypeError:  # not in this Blender's OCIO config
        strip["motionfollower_colorspace"] = name
