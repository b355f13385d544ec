"""MotionFollower for Blender: edit the motion of a person in a VSE strip with a diffusion backend.

The model runs in a separate process (the backend venv made by install.py, found through config.py),
driven over JSON-RPC (client.py); this package only checks and exports strips (inputs.py,
strips.py), runs the edit's lifecycle (run.py), shows progress (ui.py) and keeps the results next to
the .blend (results.py). Scripting API: `scene.motionfollower` + `bpy.ops.motionfollower.edit()`
(docs/blender.md).
"""

bl_info = {  # legacy installs (scripts/addons); 4.2+ extensions read blender_manifest.toml
    "name": "MotionFollower",
    "author": "MotionFollower for Blender contributors",
    "version": (0, 1, 0),
    "blender": (4, 2, 0),
    "location": "Sequencer > Sidebar > MotionFollower",
    "description": "Make the person in a video strip follow the motion of another strip (score-guided diffusion)",
    "category": "Sequencer",
}

if "bpy" in locals():  # F8 / script reload: re-import the sub-modules
    import importlib

    for _name in ("config", "client", "depth", "strips", "inputs", "results", "properties", "preferences", "bar", "run",
                  "operators", "ui", "flamenco"):
        if _name in locals():
            importlib.reload(locals()[_name])

import bpy  # noqa: E402,F401

from . import bar, client, config, depth, flamenco, inputs, operators, preferences, properties, results, run, strips, ui  # noqa: E402,F401

# Registered in this order, unregistered in reverse; a new feature module (e.g. flamenco) joins the tuple.
_MODULES = (preferences, properties, run, operators, ui, flamenco)


def register() -> None:
    for m in _MODULES:
        m.register()


def unregister() -> None:
    for m in reversed(_MODULES):
        m.unregister()
