"""Load the authors' pretrained SymNet weights into :class:`~napari_girnet.core.nets.RegNet`.

Source: Mok & Chung, "Fast Symmetric Diffeomorphic Image Registration with Convolutional Neural
Networks", CVPR 2020; repository ``cwmok/Fast-Symmetric-Diffeomorphic-Image-Registration-with-
Convolutional-Neural-Networks`` (MIT), model ``SYMNet(2, 3, start_channel=7)`` in
``Code/Models.py``, checkpoint ``Model/SYMNet_neurite_oasis_smo30_update_80000.pth`` (80,000
iterations on neurite-OASIS, 1 mm, arrays in ``LIA`` order). GIRNet's RegNet is the same network.

**Key mapping.** SymNet's layers are ``nn.Sequential`` blocks (``<name>.0.weight``); RegNet's
encoder is numbered from 1 and its heads are plain convolutions::

    eninput -> ec1,  ec1..ec9 -> ec2..ec10,  dc1..dc8 -> dc1..dc8,  up1..up4 -> up1..up4,
    dc9 -> head_st,  dc10 -> head_ts

``dc9`` is SymNet's first output ``F_xy``, the velocity of its *first* input (``x``), which is
RegNet's ``v_st`` (the velocity of its first input, the scan). Layer types, widths, biases (the
heads have none), activations (ReLU, Softsign) and the skip order are identical.

**Axes.** SymNet's velocity channel ``c`` is the displacement along array axis ``2 - c`` (its
identity grid is in ``grid_sample``'s (W, H, D) order); RegNet's channel ``a`` is along array axis
``a``. Both are in voxels after the ``range_flow`` scaling. SymNet was trained on arrays in the
neurite-OASIS order ``LIA`` (axis 0 -> Left, 1 -> Inferior, 2 -> Anterior); the working grids
here are ``RAS``. Our axis ``a`` is SymNet's axis ``perm[a]``, reversed where the direction
differs (for LIA -> RAS: ``perm = (0, 2, 1)``, axes 0 and 2 reversed). The map is

* kernels: spatial dims permuted by ``perm`` and reversed along the reversed axes;
* velocity heads: output channel ``a`` = SymNet channel ``2 - perm[a]``, negated where axis ``a``
  is reversed (Softsign is odd, so negating the head's weights negates the velocity).

A permutation of the axes is exact: ``RegNet(x.permute(perm)) == SymNet(x)`` mapped back, to
float rounding. A reversal is exact for every stride-1 convolution and for the stride-2
transposed convolutions, but not for the four stride-2 3x3x3 convolutions: on an even-sized axis
they sample the centres 0, 2, 4, ... ; mirrored, those become the odd centres. So RegNet with
reversed kernels on reversed input equals the mirror of SymNet computed with its stride-2
convolutions on the odd lattice (padding (0, 1) instead of (1, 1) along that axis), also to
float rounding — a one-voxel shift of the downsampling lattice at each level, which the test
``tests/unit/test_symnet.py`` proves exactly. ``flip=False`` skips the reversal: then the
network is exactly SymNet but sees the anatomy mirrored along those axes.

Only torch and the standard library are imported here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from .nets import RegNet

__all__ = [
    "SYMNET_AXCODES",
    "SymNetWeightsError",
    "axis_mapping",
    "load_symnet_state",
    "map_symnet_state",
    "regnet_from_symnet",
    "symnet_key_map",
]

log = logging.getLogger(__name__)

#: Array order of SymNet's neurite-OASIS training volumes (nibabel axis codes).
SYMNET_AXCODES: tuple[str, str, str] = ("L", "I", "A")
#: Canonical working-grid order of this package.
RAS: tuple[str, str, str] = ("R", "A", "S")

_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
_HEADS = ("head_st", "head_ts")


class SymNetWeightsError(ValueError):
    """A SymNet weights file is missing, unreadable, or not a SymNet state dict."""


def symnet_key_map() -> dict[str, str]:
    """SymNet parameter name -> RegNet parameter name (46 entries for 3D).

    Returns
    -------
    dict
        e.g. ``"eninput.0.weight" -> "ec1.0.weight"``, ``"dc9.0.weight" -> "head_st.weight"``.
    """
    out: dict[str, str] = {}
    enc = ["eninput"] + [f"ec{i}" for i in range(1, 10)]
    for i, name in enumerate(enc, start=1):
        for p in ("weight", "bias"):
            out[f"{name}.0.{p}"] = f"ec{i}.0.{p}"
    for i in range(1, 9):
        for p in ("weight", "bias"):
            out[f"dc{i}.0.{p}"] = f"dc{i}.0.{p}"
    for i in range(1, 5):
        for p in ("weight", "bias"):
            out[f"up{i}.0.{p}"] = f"up{i}.0.{p}"
    out["dc9.0.weight"] = "head_st.weight"
    out["dc10.0.weight"] = "head_ts.weight"
    return out


def axis_mapping(
    source: Sequence[str], target: Sequence[str] = RAS
) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """How target array axes relate to source array axes (both given as nibabel axis codes).

    Parameters
    ----------
    source, target : sequence of str
        Three axis codes each, e.g. ``("L", "I", "A")`` and ``("R", "A", "S")``.

    Returns
    -------
    perm : tuple of int
        Target axis ``a`` is source axis ``perm[a]``.
    reversed : tuple of bool
        ``True`` where the two axes point in opposite directions.

    Raises
    ------
    ValueError
        If the codes are not two valid orientations.
    """
    src = tuple(str(c).upper() for c in source)
    dst = tuple(str(c).upper() for c in target)
    for codes in (src, dst):
        if len(codes) != 3 or any(c not in _OPPOSITE for c in codes):
            raise ValueError(f"axis codes must be three of L/R/A/P/S/I, got {codes}")
        if len({frozenset((c, _OPPOSITE[c])) for c in codes}) != 3:
            raise ValueError(f"axis codes {codes} repeat a direction")
    perm: list[int] = []
    rev: list[bool] = []
    for code in dst:
        for j, s in enumerate(src):
            if s == code or s == _OPPOSITE[code]:
                perm.append(j)
                rev.append(s != code)
                break
    return (perm[0], perm[1], perm[2]), (rev[0], rev[1], rev[2])


def _map_kernel(w: Tensor, perm: Sequence[int], flips: Sequence[bool]) -> Tensor:
    """Permute the spatial dims of a ``(C, C', k0, k1, k2)`` kernel and reverse the flipped ones."""
    w = w.permute(0, 1, *(2 + p for p in perm))
    dims = [2 + a for a, f in enumerate(flips) if f]
    return (w.flip(dims) if dims else w).contiguous()


def map_symnet_state(
    state: Mapping[str, Tensor],
    *,
    source_axcodes: Sequence[str] = SYMNET_AXCODES,
    target_axcodes: Sequence[str] = RAS,
    flip: bool = True,
    origin: str = "SymNet weights",
) -> dict[str, Tensor]:
    """Turn a SymNet state dict into a RegNet state dict for arrays in ``target_axcodes`` order.

    Parameters
    ----------
    state : mapping
        SymNet ``state_dict`` (keys of :func:`symnet_key_map`; a ``"module."`` prefix is dropped).
    source_axcodes : sequence of str
        Array order SymNet was trained on (default neurite-OASIS ``LIA``).
    target_axcodes : sequence of str
        Array order RegNet will see (default ``RAS``, the working grids).
    flip : bool
        Reverse kernels (and negate velocity channels) along axes whose direction differs, so
        the network sees anatomy the way it was trained (module docstring). ``False``: permute
        only (exact SymNet, mirrored anatomy).
    origin : str
        Name used in error messages (the file).

    Returns
    -------
    dict
        float32 tensors keyed as :class:`RegNet` (``ndim=3``,
        ``start_channels = state["eninput.0.weight"].shape[0]``) expects.

    Raises
    ------
    SymNetWeightsError
        Missing / unexpected keys, non-tensor values, or shapes that do not form a SymNet.
    """
    if not isinstance(state, Mapping):
        raise SymNetWeightsError(f"{origin}: expected a state dict, got {type(state).__name__}")
    keys = list(state)
    if keys and all(str(k).startswith("module.") for k in keys):
        state = {str(k)[len("module.") :]: v for k, v in state.items()}
    kmap = symnet_key_map()
    missing = sorted(set(kmap) - set(state))
    unexpected = sorted(set(state) - set(kmap))
    if missing or unexpected:
        raise SymNetWeightsError(
            f"{origin}: not a SymNet state dict (missing keys {missing[:4]}"
            f"{'...' if len(missing) > 4 else ''}, unexpected keys {unexpected[:4]}"
            f"{'...' if len(unexpected) > 4 else ''})"
        )
    for k in kmap:
        if not isinstance(state[k], Tensor) or not state[k].is_floating_point():
            raise SymNetWeightsError(f"{origin}: {k} is not a floating point tensor")
    first = state["eninput.0.weight"]
    if first.dim() != 5 or first.shape[1] != 2:
        raise SymNetWeightsError(
            f"{origin}: eninput.0.weight has shape {tuple(first.shape)}, expected (c, 2, 3, 3, 3)"
        )
    c = int(first.shape[0])
    perm, rev = axis_mapping(source_axcodes, target_axcodes)
    flips = rev if flip else (False, False, False)
    expected = RegNet(ndim=3, start_channels=c, seed=0).state_dict()
    out: dict[str, Tensor] = {}
    for src_key, dst_key in kmap.items():
        w = state[src_key].detach().to("cpu", torch.float32)
        if w.dim() == 5:
            w = _map_kernel(w, perm, flips)
            if dst_key.split(".")[0] in _HEADS:
                # output channel a <- SymNet channel (2 - perm[a]), negated where reversed
                rows = [w[2 - perm[a]] * (-1.0 if flips[a] else 1.0) for a in range(3)]
                w = torch.stack(rows).contiguous()
        shape = tuple(expected[dst_key].shape)
        if tuple(w.shape) != shape:
            raise SymNetWeightsError(
                f"{origin}: {src_key} has shape {tuple(state[src_key].shape)}, which does not fit "
                f"a SymNet with start_channel {c} (RegNet {dst_key} needs {shape})"
            )
        out[dst_key] = w
    return out


def load_symnet_state(
    path: str | os.PathLike[str],
    *,
    source_axcodes: Sequence[str] = SYMNET_AXCODES,
    target_axcodes: Sequence[str] = RAS,
    flip: bool = True,
) -> dict[str, Tensor]:
    """Read a SymNet ``.pth`` (``torch.load(weights_only=True)``) and map it for RegNet.

    Parameters
    ----------
    path : path
        The authors' checkpoint, e.g. ``SYMNet_neurite_oasis_smo30_update_80000.pth``.
    source_axcodes, target_axcodes, flip
        See :func:`map_symnet_state`.

    Returns
    -------
    dict
        RegNet state dict (3D, start channels from the file).

    Raises
    ------
    SymNetWeightsError
        The file is missing, not a (safe) PyTorch file, or not a SymNet state dict.
    """
    file = Path(path)
    if not file.is_file():
        raise SymNetWeightsError(f"{file}: SymNet weights file not found")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt / unsafe files
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise SymNetWeightsError(
            f"{file}: not a readable PyTorch weights file ({type(err).__name__}: {reason})"
        ) from err
    return map_symnet_state(
        state,
        source_axcodes=source_axcodes,
        target_axcodes=target_axcodes,
        flip=flip,
        origin=str(file),
    )


def regnet_from_symnet(
    path: str | os.PathLike[str],
    *,
    range_flow: float = 100.0,
    source_axcodes: Sequence[str] = SYMNET_AXCODES,
    target_axcodes: Sequence[str] = RAS,
    flip: bool = True,
) -> RegNet:
    """A 3D :class:`RegNet` carrying the SymNet weights of ``path``, for ``target_axcodes`` arrays.

    ``range_flow`` must stay 100 (SymNet's value) for the velocities to mean what they were
    trained to mean; the start channels come from the file (7 for the public checkpoint).

    Raises
    ------
    SymNetWeightsError
        See :func:`load_symnet_state`.
    """
    state = load_symnet_state(
        path, source_axcodes=source_axcodes, target_axcodes=target_axcodes, flip=flip
    )
    c = int(state["ec1.0.weight"].shape[0])
    net = RegNet(ndim=3, start_channels=c, range_flow=range_flow, seed=0)
    net.load_state_dict(state, strict=True)
    log.info("RegNet from SymNet weights %s (start channels %d, flip=%s)", path, c, flip)
    return net
