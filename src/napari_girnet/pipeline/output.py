"""Output folders that appear complete or not at all.

Results are written into a hidden temporary sibling of the output folder and moved into place
only when everything is written, so a cancelled or failed run (or a crash) leaves no
half-written folder that looks complete. Used by ``RegistrationResult.save``, the CLI and the
Apply widget.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["staged_directory"]


@contextlib.contextmanager
def staged_directory(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to ``out_dir``; move its contents there on success.

    When the block exits normally, a missing ``out_dir`` is created by renaming the temporary
    folder (atomic on one file system); an existing ``out_dir`` receives each entry by
    ``os.replace`` (an existing entry of the same name is replaced). When the block raises
    (including ``KeyboardInterrupt`` or a cancellation), the temporary folder is deleted and
    ``out_dir`` is left as it was.

    Raises
    ------
    NotADirectoryError
        If ``out_dir`` exists and is not a folder (raised before anything is written).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()  # mode from the umask, like any folder the user creates
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _commit(tmp, out)


def _commit(tmp: Path, out: Path) -> None:
    """Move the staged folder into place (see :func:`staged_directory`)."""
    if not out.exists():
        os.replace(tmp, out)
        return
    for entry in sorted(tmp.iterdir()):
        target = out / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    tmp.rmdir()
