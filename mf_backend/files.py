"""File helpers every job shares: the output-folder rule and atomic output.

A low module (it imports only `errors`), so jobs, model saving and the synthetic-pair writer can all use
it without importing each other.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from mf_backend.errors import InvalidParams


def check_output_free(out: Path) -> None:
    """The one output-folder rule: `out` must not exist, or be an empty folder (nothing of the user's is
    ever overwritten)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidParams(f"output '{out}' already exists and is not empty",
                            "choose a new output folder; nothing of yours is overwritten")


@contextlib.contextmanager
def atomic_output_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it to `final` only if the block succeeds.

    Never overwrites the user's data: `final` must pass `check_output_free`. On any error (cancellation
    included) the temporary folder is removed and `final` is left as it was.
    """
    final = Path(final).expanduser().resolve()
    check_output_free(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            final.rmdir()  # empty, checked above
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
