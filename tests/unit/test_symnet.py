"""SymNet weights -> RegNet: key mapping and the axis permutation / reversal are exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from napari_girnet.core.nets import RegNet, count_parameters
from napari_girnet.core.symnet import (
    SymNetWeightsError,
    axis_mapping,
    load_symnet_state,
    map_symnet_state,
    regnet_from_symnet,
    symnet_key_map,
)

REAL = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "weights"
    / "symnet-oasis"
    / "SYMNet_neurite_oasis_smo30_update_80000.pth"
)

_STRIDE2 = ("ec2", "ec4", "ec6", "ec8")  # SymNet's stride-2 encoders


def _symnet_state(c: int, seed: int) -> dict[str, torch.Tensor]:
    """A random state dict with SymNet's key structure (SYMNet(2, 3, c) of Code/Models.py)."""
    g = torch.Generator().manual_seed(seed)
    conv = {
        "eninput": (2, c),
        "ec1": (c, c),
        "ec2": (c, 2 * c),
        "ec3": (2 * c, 2 * c),
        "ec4": (2 * c, 4 * c),
        "ec5": (4 * c, 4 * c),
        "ec6": (4 * c, 8 * c),
        "ec7": (8 * c, 8 * c),
        "ec8": (8 * c, 16 * c),
        "ec9": (16 * c, 8 * c),
        "dc1": (16 * c, 8 * c),
        "dc2": (8 * c, 4 * c),
        "dc3": (8 * c, 4 * c),
        "dc4": (4 * c, 2 * c),
        "dc5": (4 * c, 4 * c),
        "dc6": (4 * c, 2 * c),
        "dc7": (3 * c, 2 * c),
        "dc8": (2 * c, 2 * c),
    }
    sd: dict[str, torch.Tensor] = {}
    for name, (cin, cout) in conv.items():
        sd[f"{name}.0.weight"] = torch.randn(cout, cin, 3, 3, 3, generator=g) * (cin * 27) ** -0.5
        sd[f"{name}.0.bias"] = torch.randn(cout, generator=g) * 0.05
    for name in ("dc9", "dc10"):
        sd[f"{name}.0.weight"] = torch.randn(3, 2 * c, 5, 5, 5, generator=g) * 0.02
    for name, ch in (("up1", 8 * c), ("up2", 4 * c), ("up3", 2 * c), ("up4", 2 * c)):
        sd[f"{name}.0.weight"] = torch.randn(ch, ch, 2, 2, 2, generator=g) * (ch * 8) ** -0.5
        sd[f"{name}.0.bias"] = torch.randn(ch, generator=g) * 0.05
    return sd


def _symnet_forward(
    sd: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    odd_lattice: tuple[int, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """SymNet's forward (Code/Models.py), written out with the functional API.

    Returns the two Softsign outputs (F_xy, F_yx) in SymNet's units and channel order (channel
    c along array axis 2 - c). ``odd_lattice`` lists array axes along which the stride-2
    convolutions sample the odd centres (padding (0, 1) instead of (1, 1)); ``()`` is SymNet.
    """

    def conv(name: str, t: torch.Tensor, stride: int = 1) -> torch.Tensor:
        w, b = sd[f"{name}.0.weight"], sd[f"{name}.0.bias"]
        if stride == 2 and odd_lattice:
            pads: list[int] = []
            for axis in (2, 1, 0):  # F.pad lists the last axis first
                pads += [0, 1] if axis in odd_lattice else [1, 1]
            return F.relu(F.conv3d(F.pad(t, pads), w, b, stride=2))
        return F.relu(F.conv3d(t, w, b, stride=stride, padding=1))

    def up(name: str, t: torch.Tensor) -> torch.Tensor:
        return F.relu(F.conv_transpose3d(t, sd[f"{name}.0.weight"], sd[f"{name}.0.bias"], 2))

    e0 = conv("ec1", conv("eninput", torch.cat([x, y], 1)))
    e1 = conv("ec3", conv("ec2", e0, 2))
    e2 = conv("ec5", conv("ec4", e1, 2))
    e3 = conv("ec7", conv("ec6", e2, 2))
    e4 = conv("ec9", conv("ec8", e3, 2))
    d = conv("dc2", conv("dc1", torch.cat([up("up1", e4), e3], 1)))
    d = conv("dc4", conv("dc3", torch.cat([up("up2", d), e2], 1)))
    d = conv("dc6", conv("dc5", torch.cat([up("up3", d), e1], 1)))
    d = conv("dc8", conv("dc7", torch.cat([up("up4", d), e0], 1)))
    f_xy = F.softsign(F.conv3d(d, sd["dc9.0.weight"], padding=2))
    f_yx = F.softsign(F.conv3d(d, sd["dc10.0.weight"], padding=2))
    return f_xy, f_yx


def _to_ours(
    field: torch.Tensor, perm: tuple[int, ...], rev: tuple[bool, ...], range_flow: float
) -> torch.Tensor:
    """A SymNet velocity (their axes, their channel order, units of range_flow) in our frame."""
    spatial = field.permute(0, 1, *(2 + p for p in perm))
    dims = [2 + a for a, r in enumerate(rev) if r]
    spatial = spatial.flip(dims) if dims else spatial
    chans = [spatial[:, 2 - perm[a]] * (-1.0 if rev[a] else 1.0) for a in range(3)]
    return torch.stack(chans, 1) * range_flow


def _inputs(shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.rand(1, 1, *shape, generator=g), torch.rand(1, 1, *shape, generator=g)


def test_key_map_covers_regnet() -> None:
    kmap = symnet_key_map()
    assert len(kmap) == 46
    ours = set(RegNet(ndim=3, start_channels=2, seed=0).state_dict())
    assert set(kmap.values()) == ours
    assert kmap["dc9.0.weight"] == "head_st.weight"
    assert kmap["eninput.0.bias"] == "ec1.0.bias"
    assert kmap["ec9.0.weight"] == "ec10.0.weight"


def test_axis_mapping_lia_to_ras() -> None:
    assert axis_mapping(("L", "I", "A"), ("R", "A", "S")) == ((0, 2, 1), (True, False, True))
    assert axis_mapping("RAS", "RAS") == ((0, 1, 2), (False, False, False))
    with pytest.raises(ValueError, match="repeat"):
        axis_mapping(("L", "R", "A"))


@pytest.mark.parametrize("source", [("L", "I", "A"), ("A", "S", "L")])
def test_permutation_is_exact(source: tuple[str, str, str]) -> None:
    """flip=False: RegNet on the permuted input == SymNet, outputs mapped back (exact)."""
    sd = _symnet_state(2, seed=1)
    perm, _ = axis_mapping(source, ("R", "A", "S"))
    x, y = _inputs((16, 32, 48))
    ref_xy, ref_yx = _symnet_forward(sd, x, y)
    net = RegNet(ndim=3, start_channels=2, range_flow=100.0, seed=0)
    net.load_state_dict(map_symnet_state(sd, source_axcodes=source, flip=False))
    xp, yp = (t.permute(0, 1, *(2 + p for p in perm)) for t in (x, y))
    with torch.no_grad():
        v_st, v_ts = net(xp, yp)
    none = (False, False, False)
    torch.testing.assert_close(v_st, _to_ours(ref_xy, perm, none, 100.0), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(v_ts, _to_ours(ref_yx, perm, none, 100.0), atol=2e-5, rtol=1e-5)


def test_reversal_is_exact_up_to_the_stride_lattice() -> None:
    """flip=True: RegNet on the RAS input == SymNet (odd stride lattice on reversed axes)."""
    sd = _symnet_state(2, seed=2)
    perm, rev = axis_mapping(("L", "I", "A"), ("R", "A", "S"))
    x, y = _inputs((32, 16, 48))  # LIA order
    odd = tuple(perm[a] for a in range(3) if rev[a])  # SymNet axes that are reversed
    ref_xy, ref_yx = _symnet_forward(sd, x, y, odd_lattice=odd)
    net = RegNet(ndim=3, start_channels=2, range_flow=100.0, seed=0)
    net.load_state_dict(map_symnet_state(sd))

    def to_ras(t: torch.Tensor) -> torch.Tensor:
        t = t.permute(0, 1, *(2 + p for p in perm))
        return t.flip([2 + a for a in range(3) if rev[a]])

    with torch.no_grad():
        v_st, v_ts = net(to_ras(x), to_ras(y))
    torch.testing.assert_close(v_st, _to_ours(ref_xy, perm, rev, 100.0), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(v_ts, _to_ours(ref_yx, perm, rev, 100.0), atol=2e-5, rtol=1e-5)
    # the lattice matters: the standard SymNet forward differs from this one
    std_xy, _ = _symnet_forward(sd, x, y)
    assert not torch.allclose(std_xy, ref_xy, atol=1e-4)


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "none.pth"
    with pytest.raises(SymNetWeightsError, match=r"none\.pth: SymNet weights file not found"):
        load_symnet_state(missing)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(SymNetWeightsError, match=r"corrupt\.pth: not a readable PyTorch"):
        load_symnet_state(corrupt)
    sd = _symnet_state(2, seed=0)
    wrong_keys = tmp_path / "keys.pth"
    torch.save({("x" + k): v for k, v in sd.items()}, wrong_keys)
    with pytest.raises(SymNetWeightsError, match=r"keys\.pth: not a SymNet state dict"):
        load_symnet_state(wrong_keys)
    bad = dict(sd)
    bad["dc3.0.weight"] = torch.zeros(3, 3, 3, 3, 3)
    wrong_shape = tmp_path / "shape.pth"
    torch.save(bad, wrong_shape)
    with pytest.raises(SymNetWeightsError, match=r"shape\.pth: dc3\.0\.weight has shape"):
        load_symnet_state(wrong_shape)


def test_module_prefix_and_regnet_from_symnet(tmp_path: Path) -> None:
    sd = _symnet_state(3, seed=4)
    path = tmp_path / "dp.pth"
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    net = regnet_from_symnet(path)
    assert net.start_channels == 3
    torch.testing.assert_close(net.state_dict()["dc5.0.bias"], sd["dc5.0.bias"])


@pytest.mark.skipif(not REAL.is_file(), reason="the public SymNet checkpoint is not present")
def test_real_checkpoint_loads() -> None:
    net = regnet_from_symnet(REAL)
    assert net.start_channels == 7
    assert count_parameters(net) == 862_351
    raw = torch.load(REAL, map_location="cpu", weights_only=True)
    # head_st channel 0 (R) = -(SymNet dc9 channel 2, its axis 0 = L), kernel permuted + reversed
    w = raw["dc9.0.weight"][2].permute(0, 1, 3, 2).flip([1, 3])
    torch.testing.assert_close(net.head_st.weight[0], -w)
    with torch.no_grad():
        v_st, v_ts = net(torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32))
    assert v_st.shape == (1, 3, 32, 32, 32)
    assert torch.isfinite(v_st).all() and torch.isfinite(v_ts).all()
