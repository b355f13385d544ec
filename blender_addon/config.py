"""Where the add-on finds the backend: the venv's interpreter, the checkout, the models folder.

Pure Python (no bpy). The add-on's preferences win; empty fields are filled from the first readable
config file in this order (docs/blender.md "Backend config"):

    1. $MF_BACKEND_CONFIG
    2. <this add-on's folder>/backend_config.json   (install.py writes it into the copies it installs)
    3. <user config dir>/motionfollower/backend_config.json   (install.py writes it too; it survives
       add-on updates and is what an extension installed from the zip finds)
       Linux: $XDG_CONFIG_HOME or ~/.config; macOS: ~/Library/Application Support; Windows: %APPDATA%

    format: {"python": "/path/to/.venv/bin/python",   # the backend venv's interpreter (required)
             "repo": "/path/to/checkout",              # optional: cwd + PYTHONPATH for mf_backend
             "models_dir": "/path/to/pretrained_weights" | null}   # optional

The extension zip carries no config file: no path of the building machine travels with it.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

CONFIG_NAME = "backend_config.json"


def user_config_dir() -> Path:
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "motionfollower"
    if os.name == "nt":
        return Path(os.environ.get("APPDATA", Path.home())) / "motionfollower"
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "motionfollower"


def config_paths() -> list[Path]:
    paths = []
    if os.environ.get("MF_BACKEND_CONFIG"):
        paths.append(Path(os.environ["MF_BACKEND_CONFIG"]).expanduser())
    paths.append(Path(__file__).resolve().parent / CONFIG_NAME)
    paths.append(user_config_dir() / CONFIG_NAME)
    return paths


@dataclass
class BackendConfig:
    python: str = ""
    repo: Optional[str] = None
    models_dir: Optional[str] = None
    source: Optional[str] = None  # the file it was read from, for messages


def load_config() -> BackendConfig:
    """The first readable config file (see the module docstring); an empty config when there is none."""
    for path in config_paths():
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a broken file must not break Blender; the preferences show what is used
        if isinstance(data, dict) and isinstance(data.get("python"), str):
            return BackendConfig(python=data["python"], repo=data.get("repo") or None,
                                 models_dir=data.get("models_dir") or None, source=str(path))
    return BackendConfig()
