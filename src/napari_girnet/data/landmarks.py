"""Anatomical landmarks: named points in RAS millimetres, read from / written to CSV.

Two CSV formats are understood:

``"brats"`` (BraTS-Reg)
    Header ``Landmark,X,Y,Z``; coordinates are **LPS physical millimetres** (ITK world space).
    They are converted to RAS on reading: ``(x, y, z)_ras = (-X, -Y, Z)``. In the BraTS-Reg data
    (240x240x155 grid, file affine ``diag(-1, -1, 1)`` with RAS translation ``(0, 239, 0)``) the
    LPS point ``(X, Y, Z)`` is voxel ``(X, Y + 239, Z)`` of the file's array.
``"ras"``
    Header ``id,x,y,z``; RAS millimetres (NIfTI / nibabel world space).

No torch and no Qt here.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import secrets
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_girnet.data.volume import Volume

__all__ = [
    "FORMATS",
    "LandmarkError",
    "Landmarks",
    "natural_key",
    "pair_landmarks",
    "read_landmarks",
    "write_landmarks",
]

logger = logging.getLogger(__name__)

FORMATS = ("brats", "ras")
"""Landmark CSV formats: ``"brats"`` (``Landmark,X,Y,Z``, LPS mm) and ``"ras"`` (``id,x,y,z``)."""

# First header cell (lower case) -> format; the next three must be x, y, z.
_ID_COLUMNS = {"landmark": "brats", "id": "ras"}
_HEADERS = {"brats": ("Landmark", "X", "Y", "Z"), "ras": ("id", "x", "y", "z")}
_LPS_FLIP = np.array([-1.0, -1.0, 1.0])


class LandmarkError(ValueError):
    """Bad landmark data; the message names the file (and line) or the landmark ids at fault."""


def natural_key(text: str) -> tuple:
    """Sort key that orders embedded numbers numerically: ``"2"`` before ``"10"``."""
    parts = re.split(r"(\d+)", text)
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p.lower()) for p in parts if p)


@dataclass(frozen=True, eq=False)
class Landmarks:
    """Named points in RAS world millimetres.

    Parameters
    ----------
    ids : tuple of str
        Unique landmark names, length ``N >= 1`` (any sequence is converted to a tuple of str).
    world : numpy.ndarray
        Shape ``(N, 3)``, RAS+ millimetres, float64 (stored as a read-only copy).

    Raises
    ------
    LandmarkError
        If the lengths differ, ids repeat or are empty, ``world`` is not ``(N, 3)``, holds
        NaN/inf, or ``N == 0``.
    """

    ids: tuple[str, ...]
    world: np.ndarray

    def __post_init__(self) -> None:
        ids = tuple(str(i) for i in self.ids)
        try:
            world = np.array(self.world, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise LandmarkError(f"landmark coordinates are not numbers: {exc}") from exc
        if world.ndim != 2 or world.shape[1] != 3:
            raise LandmarkError(f"landmark coordinates must have shape (N, 3), got {world.shape}")
        if len(ids) != world.shape[0]:
            raise LandmarkError(f"{len(ids)} landmark ids but {world.shape[0]} coordinate rows")
        if not ids:
            raise LandmarkError("no landmarks (need at least one)")
        if any(not i.strip() for i in ids):
            raise LandmarkError("landmark ids must not be empty")
        dups = sorted((i for i, n in Counter(ids).items() if n > 1), key=natural_key)
        if dups:
            raise LandmarkError(f"duplicate landmark ids: {', '.join(dups)}")
        bad = [ids[n] for n in np.flatnonzero(~np.all(np.isfinite(world), axis=1))]
        if bad:
            raise LandmarkError(f"landmarks with NaN or infinite coordinates: {', '.join(bad)}")
        world.flags.writeable = False
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "world", world)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        shown = ", ".join(self.ids[:5]) + (", ..." if len(self.ids) > 5 else "")
        return f"Landmarks(n={len(self)}, ids=[{shown}])"

    def to_voxel(self, volume: Volume) -> np.ndarray:
        """Fractional voxel coordinates of the points in ``volume``'s array.

        Parameters
        ----------
        volume : Volume
            Any orientation; its ``affine`` maps its array indices to RAS mm.

        Returns
        -------
        numpy.ndarray
            Shape ``(N, 3)`` float64, ``(i, j, k)`` along ``volume.array``'s axes, in the order
            of :attr:`ids`. Voxel centres are at integer coordinates.
        """
        return volume.world_to_voxel(self.world)

    @classmethod
    def from_voxel(cls, ids: Sequence[str], ijk: np.ndarray, volume: Volume) -> Landmarks:
        """Landmarks from voxel coordinates ``ijk`` ``(N, 3)`` (fractional allowed) of ``volume``.

        Raises
        ------
        LandmarkError
            As the constructor, or if ``ijk`` is not ``(N, 3)``.
        """
        ijk = np.asarray(ijk, dtype=np.float64)
        if ijk.ndim != 2 or ijk.shape[1] != 3:
            raise LandmarkError(f"voxel coordinates must have shape (N, 3), got {ijk.shape}")
        return cls(tuple(ids), volume.voxel_to_world(ijk))

    def subset(self, ids: Iterable[str]) -> Landmarks:
        """The landmarks named in ``ids``, in that order.

        Raises
        ------
        LandmarkError
            If an id is unknown (the message lists them) or ``ids`` is empty.
        """
        wanted = [str(i) for i in ids]
        index = {name: n for n, name in enumerate(self.ids)}
        missing = [i for i in wanted if i not in index]
        if missing:
            raise LandmarkError(f"unknown landmark ids: {', '.join(missing)}")
        return Landmarks(tuple(wanted), self.world[[index[i] for i in wanted]])


# ----------------------------------------------------------------------------- reading
def _format_from_header(cells: list[str], path: Path, line: int, fmt: str) -> str:
    names = [c.strip().lstrip("\ufeff").strip().lower() for c in cells]
    accepted = " or ".join(",".join(h) for h in _HEADERS.values())
    if len(names) < 4 or names[0] not in _ID_COLUMNS or names[1:4] != ["x", "y", "z"]:
        raise LandmarkError(
            f"{path}, line {line}: unrecognised header {','.join(c.strip() for c in cells)!r}; "
            f"expected {accepted} (case-insensitive)"
        )
    from_header = _ID_COLUMNS[names[0]]
    if fmt == "auto":
        return from_header
    if fmt != from_header:
        logger.warning(
            "%s: header looks like %r but fmt=%r was asked for; using %r",
            path,
            from_header,
            fmt,
            fmt,
        )
    return fmt


def _parse_float(text: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LandmarkError(
            f"{path}, line {line}: column {column} value {text!r} is not a number"
        ) from None
    if not math.isfinite(value):
        raise LandmarkError(f"{path}, line {line}: column {column} value {text!r} is not finite")
    return value


def read_landmarks(path: str | os.PathLike[str], fmt: str = "auto") -> Landmarks:
    """Read a landmark CSV into RAS millimetres.

    Parameters
    ----------
    path : str or os.PathLike
        CSV file with a header row. Blank lines and lines starting with ``#`` are skipped;
        cells are whitespace-trimmed; columns after the fourth are ignored.
    fmt : {"auto", "brats", "ras"}
        ``"brats"``: ``Landmark,X,Y,Z`` in LPS mm, converted to RAS ``(-X, -Y, Z)``.
        ``"ras"``: ``id,x,y,z`` in RAS mm. ``"auto"`` (default) decides from the header's
        first column (``Landmark`` -> brats, ``id`` -> ras, case-insensitive). An explicit
        ``fmt`` decides the coordinate system even if the header suggests the other one.

    Returns
    -------
    Landmarks
        Ids in file order, world coordinates ``(N, 3)`` RAS mm.

    Raises
    ------
    LandmarkError
        Missing or unreadable file, empty file, unknown header (the message lists the accepted
        headers), a row with fewer than 4 columns, a non-numeric or non-finite coordinate, an
        empty or duplicate id; messages name the file and line.
    """
    path = Path(path)
    if fmt not in ("auto", *FORMATS):
        raise LandmarkError(f"{path}: unknown landmark format {fmt!r}; use auto, brats or ras")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LandmarkError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LandmarkError(f"{path}: cannot read the file as text ({exc})") from exc
    rows = [
        (n, row)
        for n, row in enumerate(csv.reader(text.splitlines()), start=1)
        if any(c.strip() for c in row) and not row[0].lstrip().startswith("#")
    ]
    if not rows:
        raise LandmarkError(f"{path}: file is empty (no header, no landmarks)")
    header_line, header = rows[0]
    used = _format_from_header(header, path, header_line, fmt)
    if len(rows) == 1:
        raise LandmarkError(f"{path}: no landmarks after the header (line {header_line})")
    ids: list[str] = []
    coords: list[tuple[float, float, float]] = []
    first_seen: dict[str, int] = {}
    columns = _HEADERS[used][1:]
    for line, row in rows[1:]:
        if len(row) < 4:
            raise LandmarkError(
                f"{path}, line {line}: expected 4 columns "
                f"({','.join(_HEADERS[used])}), got {len(row)}"
            )
        name = row[0].strip()
        if not name:
            raise LandmarkError(f"{path}, line {line}: empty landmark id")
        if name in first_seen:
            raise LandmarkError(
                f"{path}, line {line}: duplicate landmark id {name!r} "
                f"(first on line {first_seen[name]})"
            )
        first_seen[name] = line
        xyz = tuple(_parse_float(row[c + 1].strip(), path, line, columns[c]) for c in range(3))
        ids.append(name)
        coords.append(xyz)  # type: ignore[arg-type]
    world = np.asarray(coords, dtype=np.float64)
    if used == "brats":
        world = world * _LPS_FLIP
    try:
        return Landmarks(tuple(ids), world)
    except LandmarkError as exc:  # pragma: no cover - rows are validated above
        raise LandmarkError(f"{path}: {exc}") from exc


# ----------------------------------------------------------------------------- writing
def _fmt(value: float) -> str:
    """Shortest text that reads back as exactly ``value`` (``-0.0`` written as ``0.0``)."""
    return repr(float(value) + 0.0)


def write_landmarks(landmarks: Landmarks, path: str | os.PathLike[str], fmt: str = "ras") -> Path:
    """Write landmarks to CSV, atomically (temporary file + ``os.replace``).

    Parameters
    ----------
    landmarks : Landmarks
        Points in RAS mm.
    path : str or os.PathLike
        Output file; parent directories are created.
    fmt : {"ras", "brats"}
        ``"ras"``: header ``id,x,y,z``, RAS mm. ``"brats"``: header ``Landmark,X,Y,Z``, LPS mm
        (``X = -x, Y = -y, Z = z``). Values are written with Python's shortest round-trip
        ``repr``, so reading the file back gives bit-identical coordinates.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    LandmarkError
        Unknown ``fmt`` or the file cannot be written.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise LandmarkError(f"{path}: unknown landmark format {fmt!r}; use brats or ras")
    world = np.asarray(landmarks.world, dtype=np.float64)
    if fmt == "brats":
        world = world * _LPS_FLIP
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(_HEADERS[fmt])
            for name, xyz in zip(landmarks.ids, world, strict=True):
                writer.writerow([name, *(_fmt(v) for v in xyz)])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise LandmarkError(f"{path}: cannot write the file ({exc})") from exc
    return path


# ----------------------------------------------------------------------------- pairing
def pair_landmarks(a: Landmarks, b: Landmarks) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Match two landmark sets by id.

    Parameters
    ----------
    a, b : Landmarks
        E.g. the fixed and the moving landmarks of a registration pair.

    Returns
    -------
    ids : tuple of str
        The common ids in natural order (``"2"`` before ``"10"``).
    world_a, world_b : numpy.ndarray
        Shape ``(N, 3)`` RAS mm each, row ``n`` belonging to ``ids[n]``.

    Raises
    ------
    LandmarkError
        If the id sets differ; the message lists the ids found in only one of them.
    """
    only_a = sorted(set(a.ids) - set(b.ids), key=natural_key)
    only_b = sorted(set(b.ids) - set(a.ids), key=natural_key)
    if only_a or only_b:
        parts = []
        if only_a:
            parts.append(f"only in the first set: {', '.join(only_a)}")
        if only_b:
            parts.append(f"only in the second set: {', '.join(only_b)}")
        raise LandmarkError(f"landmark ids do not match ({'; '.join(parts)})")
    ids = tuple(sorted(a.ids, key=natural_key))
    return ids, a.subset(ids).world.copy(), b.subset(ids).world.copy()
