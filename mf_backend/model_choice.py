"""Which model a job uses, and that model's own defaults (working size, steps), known before any weights
are loaded, so a job can validate its size and fill its defaults up front."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mf_backend.weights import ASSETS_DIR, OFFICIAL_URL, weights_report

RELEASED_SIZE, RELEASED_STEPS = 512, 50  # the reference's working size and DDIM steps
SMALL_MODEL_STEPS = 25  # small models (trained below 256²) gain nothing from more steps
DEMO_FOLDER = ASSETS_DIR / "demo"
DEMO_NOTICE = ("the embedded demo model was used (trained at {size}² on synthetic people): it cannot edit "
               "real people. For real footage put the released MotionFollower weights in the models folder "
               "(`python -m mf_backend doctor` lists the files and where to put them; " + OFFICIAL_URL + ")")


@dataclass(frozen=True)
class ModelChoice:
    name: str  # what load_models takes: "official", "demo" or a folder
    size: int  # working resolution the model was trained at
    steps: int  # its default number of DDIM steps
    is_demo: bool

    @property
    def notice(self) -> Optional[str]:
        """What a user editing their own footage must be told about this model, if anything."""
        return DEMO_NOTICE.format(size=self.size) if self.is_demo else None


def trained_size(folder: Path) -> Optional[int]:
    """The training resolution written beside our own weights (train_config.json), if any."""
    cfg = Path(folder) / "train_config.json"
    try:
        return int(json.loads(cfg.read_text())["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def choose_model(model: str, models_dir: Optional[str]) -> ModelChoice:
    """"auto" → "official" when the released weights are complete, else "demo"; a folder as given."""
    if model == "auto":
        model = "official" if weights_report(models_dir)["official_model"] else "demo"
    if model == "official":
        return ModelChoice("official", RELEASED_SIZE, RELEASED_STEPS, False)
    folder = DEMO_FOLDER if model == "demo" else Path(model).expanduser()
    size = trained_size(folder) or RELEASED_SIZE
    steps = RELEASED_STEPS if size >= 256 else SMALL_MODEL_STEPS
    is_demo = folder.resolve() == DEMO_FOLDER.resolve()
    return ModelChoice(model, size, steps, is_demo)


def check_size(size: Optional[int], choice: ModelChoice) -> None:
    """A working size far above the training size gives washed-out, streaked results at a huge cost."""
    from mf_backend.errors import InvalidParams

    if size is not None and size > 4 * choice.size:
        raise InvalidParams(f"size {size} is more than 4x the size model '{choice.name}' was trained at "
                            f"({choice.size})", f"leave size out (the model's {choice.size}) or use at most "
                            f"{4 * choice.size}; the released model works at 512")
