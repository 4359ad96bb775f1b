"""The three GIRNet networks: RegNet (SymNet U-Net), SegNet and InpNet (VoxelMorph-style U-Nets).

GIRNet (Liu & Gu, MICCAI 2023, "co-learning" of registration, unsupervised lesion segmentation and
inpainting of pathological brain MRI) trains three networks:

``RegNet``
    The symmetric registration network of SymNet (Mok & Chung, CVPR 2020, "Fast Symmetric
    Diffeomorphic Image Registration with Convolutional Neural Networks"). A U-Net with four
    stride-2 downsamplings that predicts two stationary velocity fields, one per image, which
    move the scan and the atlas towards a common mid-space. 862,351 parameters (3D,
    ``start_channels=7``).
``SegNet``
    A VoxelMorph-style U-Net (one 3x3(x3) conv + LeakyReLU(0.2) per level, max pooling, nearest
    upsampling, skip concatenation) that outputs the lesion probability of the scan.
    1,404,561 parameters (3D, default widths).
``InpNet``
    A two-encoder VoxelMorph-style U-Net that fills a hole in the scan from the known part of the
    scan and from the atlas warped onto the scan; linear output. 1,239,585 parameters (3D, default
    widths).

All three are dimension-agnostic (``ndim`` 2 or 3, one code path), contain no normalisation layer,
accept any spatial size (inputs are zero-padded at the high end of each axis up to the next
multiple of 16 and the outputs are cropped back) and any batch size.

Conventions (``docs/conventions.md``): tensors are ``(B, C, *spatial)`` with the spatial axes in
numpy order; velocity fields have one channel per spatial axis in the same order, in voxels.
Layer layouts follow Liu & Gu, MICCAI 2023 (Fig. 1; SegNet in appendix B of arXiv 2310.11040),
the upstream code (github.com/ly1998117/GIRNet) and SymNet (Mok & Chung, CVPR 2020); this is
an independent implementation.

Only torch and the standard library are imported here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "InpNet",
    "NetInputError",
    "RegNet",
    "SegNet",
    "conv_nd",
    "conv_transpose_nd",
    "count_parameters",
    "max_pool_nd",
]

#: Every network works on spatial sizes that are multiples of this (4 halvings); other sizes are
#: zero-padded internally.
SIZE_MULTIPLE = 16


class NetInputError(ValueError):
    """A network received an input of the wrong type, rank, channel count, batch or shape."""


# --------------------------------------------------------------------------------------------
# Small dimension-agnostic helpers
# --------------------------------------------------------------------------------------------


def _check_ndim(ndim: int) -> int:
    if isinstance(ndim, bool) or not isinstance(ndim, int) or ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
    return ndim


def conv_nd(ndim: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    """Return ``nn.Conv2d`` for ``ndim == 2`` and ``nn.Conv3d`` for ``ndim == 3``."""
    return nn.Conv3d if _check_ndim(ndim) == 3 else nn.Conv2d


def conv_transpose_nd(ndim: int) -> type[nn.ConvTranspose2d] | type[nn.ConvTranspose3d]:
    """Return ``nn.ConvTranspose2d`` / ``nn.ConvTranspose3d`` for ``ndim`` 2 / 3."""
    return nn.ConvTranspose3d if _check_ndim(ndim) == 3 else nn.ConvTranspose2d


def max_pool_nd(ndim: int) -> type[nn.MaxPool2d] | type[nn.MaxPool3d]:
    """Return ``nn.MaxPool2d`` / ``nn.MaxPool3d`` for ``ndim`` 2 / 3."""
    return nn.MaxPool3d if _check_ndim(ndim) == 3 else nn.MaxPool2d


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module``.

    Parameters
    ----------
    module
        Any ``torch.nn.Module``.
    trainable_only
        Count only parameters with ``requires_grad=True``.

    Returns
    -------
    int
        Sum of ``p.numel()`` over ``module.parameters()``.
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _check_widths(name: str, widths: Sequence[int], min_len: int = 1) -> tuple[int, ...]:
    try:
        out = tuple(widths)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of positive ints, got {widths!r}") from None
    if len(out) < min_len or not all(
        isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in out
    ):
        raise ValueError(
            f"{name} must be a sequence of at least {min_len} positive ints, got {widths!r}"
        )
    return out


def _conv_modules(module: nn.Module) -> Iterator[nn.Module]:
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d | nn.ConvTranspose3d):
            yield m


def _init_normal(module: nn.Module, std: float, generator: torch.Generator | None) -> None:
    """Conv weights ~ N(0, std), biases 0 (pix2pix ``init_weights('normal')``)."""
    with torch.no_grad():
        for m in _conv_modules(module):
            nn.init.normal_(_param(m.weight), 0.0, std, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(_param(m.bias))


def _init_default(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default conv init (kaiming_uniform a=sqrt(5)), drawn from ``generator``.

    For ``a = sqrt(5)`` both weight and bias end up ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), with
    ``fan_in = weight.shape[1] * prod(kernel)`` (also for transposed convs, as in PyTorch).
    """
    with torch.no_grad():
        for m in _conv_modules(module):
            w = _param(m.weight)
            fan_in = w.shape[1] * math.prod(w.shape[2:])
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(w, -bound, bound, generator=generator)
            if m.bias is not None:
                nn.init.uniform_(_param(m.bias), -bound, bound, generator=generator)


def _param(value: object) -> torch.Tensor:
    """A conv's ``weight`` / ``bias`` as a tensor (``nn.Module.__getattr__`` is typed loosely)."""
    assert isinstance(value, torch.Tensor)
    return value


@contextlib.contextmanager
def _isolated_rng(seed: int | None) -> Iterator[None]:
    """Leave the global CPU RNG untouched while layers are built when an explicit seed is used."""
    if seed is None:
        yield
    else:
        with torch.random.fork_rng(devices=[]):
            yield


def _autocast_disabled(device_type: str) -> contextlib.AbstractContextManager[object]:
    """Context that switches autocast off on ``device_type`` (a no-op where autocast does not exist,
    e.g. the ``meta`` device)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _make_generator(seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int or None, got {seed!r}")
    return torch.Generator(device="cpu").manual_seed(seed)


def _shape(x: Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def _check_input(net: str, name: str, x: object, ndim: int, channels: int) -> Tensor:
    """Validate one network input ``(B, channels, *spatial)`` and return it."""
    axes = "(B, C, X, Y, Z)" if ndim == 3 else "(B, C, H, W)"
    expected = f"(B, {channels}, " + ", ".join(["*"] * ndim) + ")"
    if not isinstance(x, Tensor):
        raise NetInputError(
            f"{net}: `{name}` must be a torch.Tensor of shape {expected}, got {type(x).__name__}"
        )
    shape = _shape(x)
    if x.dim() != ndim + 2:
        raise NetInputError(
            f"{net} (ndim={ndim}): `{name}` must be a {ndim + 2}D tensor {axes} with shape "
            f"{expected}, got shape {shape}"
        )
    if shape[1] != channels:
        raise NetInputError(
            f"{net}: `{name}` must have {channels} channel(s), i.e. shape {expected}, "
            f"got shape {shape}"
        )
    if shape[0] < 1 or any(s < 1 for s in shape[2:]):
        raise NetInputError(
            f"{net}: `{name}` must have a batch size >= 1 and non-empty spatial axes, "
            f"got shape {shape}"
        )
    if not x.is_floating_point():
        raise NetInputError(f"{net}: `{name}` must be a floating point tensor, got {x.dtype}")
    return x


def _check_same_geometry(net: str, ref_name: str, ref: Tensor, name: str, x: Tensor) -> None:
    """Batch size and spatial shape of ``x`` must equal those of ``ref``."""
    if x.shape[0] != ref.shape[0]:
        raise NetInputError(
            f"{net}: batch size mismatch: `{ref_name}` has shape {_shape(ref)} (B={ref.shape[0]}) "
            f"but `{name}` has shape {_shape(x)} (B={x.shape[0]})"
        )
    if x.shape[2:] != ref.shape[2:]:
        raise NetInputError(
            f"{net}: spatial shape mismatch: expected `{name}` spatial shape "
            f"{_shape(ref)[2:]} (that of `{ref_name}`, shape {_shape(ref)}), "
            f"got {_shape(x)[2:]} (shape {_shape(x)})"
        )
    if x.device != ref.device:
        raise NetInputError(f"{net}: `{name}` is on {x.device} but `{ref_name}` is on {ref.device}")


def _pad_high(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad every spatial axis at its high end up to the next multiple of ``multiple``."""
    pads: list[int] = []
    for size in reversed(x.shape[2:]):  # F.pad lists the last axis first
        pads += [0, (-int(size)) % multiple]
    if not any(pads):
        return x
    return F.pad(x, pads, mode="constant", value=0.0)


def _crop(x: Tensor, spatial: Sequence[int]) -> Tensor:
    """Undo :func:`_pad_high`: keep ``x[..., :spatial[0], :spatial[1], ...]`` (a view)."""
    if tuple(x.shape[2:]) == tuple(spatial):
        return x
    return x[(slice(None), slice(None), *(slice(0, int(s)) for s in spatial))]


class _NetBase(nn.Module):
    """Shared input handling: device/dtype checks, padding and cropping."""

    ndim: int

    def _param(self) -> Tensor:
        return next(self.parameters())

    def _prepare(self, net: str, name: str, x: Tensor) -> Tensor:
        """Cast to the parameter dtype and pad to a multiple of 16 (device is checked)."""
        p = self._param()
        if x.device != p.device:
            raise NetInputError(
                f"{net}: `{name}` is on {x.device} but the network parameters are on {p.device}"
            )
        return _pad_high(x.to(dtype=p.dtype), SIZE_MULTIPLE)


# --------------------------------------------------------------------------------------------
# RegNet: SymNet U-Net
# --------------------------------------------------------------------------------------------


def _conv_relu(ndim: int, cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        conv_nd(ndim)(cin, cout, kernel_size=3, stride=stride, padding=1, bias=True), nn.ReLU()
    )


def _up_relu(ndim: int, cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv_transpose_nd(ndim)(cin, cout, kernel_size=2, stride=2), nn.ReLU())


class RegNet(_NetBase):
    """SymNet registration U-Net ("SymUNet") predicting two stationary velocity fields.

    Source: Mok & Chung, "Fast Symmetric Diffeomorphic Image Registration with Convolutional
    Neural Networks", CVPR 2020 (SymNet), as used for RegNet ψ in GIRNet (Liu & Gu, MICCAI 2023;
    ``SymUNet(in=2, out=3, start_channel=7)``). Layout (``c = start_channels``, all convs
    3x3(x3) + ReLU, bias, padding 1, no normalisation)::

        encoder  ec1 2->c, ec2 c->c                              -> e0 @1
                 ec3 c->2c s2,  ec4 2c->2c                       -> e1 @1/2
                 ec5 2c->4c s2, ec6 4c->4c                       -> e2 @1/4
                 ec7 4c->8c s2, ec8 8c->8c                       -> e3 @1/8
                 ec9 8c->16c s2, ec10 16c->8c                    -> e4 @1/16
        decoder  up1 ConvT(k2,s2) 8c->8c + ReLU, cat e3, dc1 16c->8c, dc2 8c->4c
                 up2 4c->4c, cat e2, dc3 8c->4c, dc4 4c->2c
                 up3 2c->2c, cat e1, dc5 4c->4c, dc6 4c->2c
                 up4 2c->2c, cat e0, dc7 3c->2c, dc8 2c->2c
        heads    head_st, head_ts: conv 5x5(x5), padding 2, no bias, 2c->ndim, Softsign

    The Softsign outputs in (-1, 1) are multiplied by ``range_flow``, so the returned fields are
    in voxels with ``|v| < range_flow``. With ``ndim=3, start_channels=7`` the network has
    exactly 862,351 parameters (as the reference checkpoint). PyTorch default initialisation.

    Parameters
    ----------
    ndim
        2 or 3 (number of spatial axes).
    start_channels
        Base width ``c`` (GIRNet: 7; the original SymNet repository: 8).
    range_flow
        Scale of the Softsign output, in voxels (reference: 100).
    head_std
        ``None`` (reference): PyTorch's default init of the velocity heads, which starts from
        random deformations of several voxels. A float: heads drawn from N(0, head_std)
        (VoxelMorph uses 1e-5), i.e. training starts at the identity map.
    seed
        If given, the weights are drawn (PyTorch default scheme) from a ``torch.Generator`` seeded
        with it and the global RNG is left untouched; if ``None`` (default) the global RNG is used,
        exactly as plain PyTorch layers would.

    Notes
    -----
    Inputs of any spatial size are zero-padded at the high end of each axis to the next multiple
    of 16 and the outputs are cropped back. Under ``torch.autocast`` the two heads run in float32
    (a bf16 Softsign times 100 would quantise velocities to ~0.4 voxel), and the fields are
    returned in the parameter dtype (float32 by default).
    """

    def __init__(
        self,
        ndim: int = 3,
        start_channels: int = 7,
        range_flow: float = 100.0,
        *,
        head_std: float | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.ndim = _check_ndim(ndim)
        (c,) = _check_widths("start_channels", (start_channels,))
        if head_std is not None and not (math.isfinite(head_std) and head_std >= 0):
            raise ValueError(f"head_std must be a finite number >= 0, got {head_std!r}")
        if not (isinstance(range_flow, int | float) and math.isfinite(range_flow)) or (
            range_flow <= 0
        ):
            raise ValueError(f"range_flow must be a positive finite number, got {range_flow!r}")
        self.start_channels = c
        self.range_flow = float(range_flow)
        generator = _make_generator(seed)

        with _isolated_rng(seed):
            # encoder
            self.ec1 = _conv_relu(ndim, 2, c)
            self.ec2 = _conv_relu(ndim, c, c)
            self.ec3 = _conv_relu(ndim, c, 2 * c, stride=2)
            self.ec4 = _conv_relu(ndim, 2 * c, 2 * c)
            self.ec5 = _conv_relu(ndim, 2 * c, 4 * c, stride=2)
            self.ec6 = _conv_relu(ndim, 4 * c, 4 * c)
            self.ec7 = _conv_relu(ndim, 4 * c, 8 * c, stride=2)
            self.ec8 = _conv_relu(ndim, 8 * c, 8 * c)
            self.ec9 = _conv_relu(ndim, 8 * c, 16 * c, stride=2)
            self.ec10 = _conv_relu(ndim, 16 * c, 8 * c)
            # decoder
            self.up1 = _up_relu(ndim, 8 * c, 8 * c)
            self.dc1 = _conv_relu(ndim, 16 * c, 8 * c)
            self.dc2 = _conv_relu(ndim, 8 * c, 4 * c)
            self.up2 = _up_relu(ndim, 4 * c, 4 * c)
            self.dc3 = _conv_relu(ndim, 8 * c, 4 * c)
            self.dc4 = _conv_relu(ndim, 4 * c, 2 * c)
            self.up3 = _up_relu(ndim, 2 * c, 2 * c)
            self.dc5 = _conv_relu(ndim, 4 * c, 4 * c)
            self.dc6 = _conv_relu(ndim, 4 * c, 2 * c)
            self.up4 = _up_relu(ndim, 2 * c, 2 * c)
            self.dc7 = _conv_relu(ndim, 3 * c, 2 * c)
            self.dc8 = _conv_relu(ndim, 2 * c, 2 * c)
            # velocity heads (Softsign applied in forward, in float32)
            self.head_st = conv_nd(ndim)(2 * c, ndim, kernel_size=5, padding=2, bias=False)
            self.head_ts = conv_nd(ndim)(2 * c, ndim, kernel_size=5, padding=2, bias=False)
        if generator is not None:
            _init_default(self, generator)
        if head_std is not None:
            # VoxelMorph-style near-identity start: tiny velocities, so training begins from the
            # identity map instead of first undoing random ~range_flow-scale deformations
            for head in (self.head_st, self.head_ts):
                with torch.no_grad():
                    head.weight.normal_(0.0, head_std, generator=generator)

    def extra_repr(self) -> str:
        return (
            f"ndim={self.ndim}, start_channels={self.start_channels}, range_flow={self.range_flow}"
        )

    def forward(self, scan: Tensor, atlas: Tensor) -> tuple[Tensor, Tensor]:
        """Predict the two stationary velocity fields of the symmetric registration.

        Parameters
        ----------
        scan
            The (pathological) scan S, shape ``(B, 1, *spatial)``, intensities in [0, 1].
        atlas
            The atlas / template T on the same voxel grid, shape ``(B, 1, *spatial)``.

        Returns
        -------
        v_st, v_ts : Tensor
            Stationary velocity fields in **voxels** (already multiplied by ``range_flow``),
            each ``(B, ndim, *spatial)``, channel ``i`` = displacement along spatial axis ``i``,
            ``|v| < range_flow``. ``v_st`` is the paper's ``v_xy`` with x = scan: its exponential
            ``u = integrate(v_st)`` moves the scan to the mid-space, ``scan_mid = warp(scan, u)``;
            ``v_ts`` does the same for the atlas. The inverse half maps are ``integrate(-v)`` and
            the full displacements (``phi_st``, ``phi_ts``) are compositions through the mid-space.

        Raises
        ------
        NetInputError
            (a ``ValueError``) for a non-tensor, wrong rank, channel count, empty or integer
            input, device mismatch, or different batch size / spatial shape of the two inputs.
        """
        net = "RegNet"
        _check_input(net, "scan", scan, self.ndim, 1)
        _check_input(net, "atlas", atlas, self.ndim, 1)
        _check_same_geometry(net, "scan", scan, "atlas", atlas)
        spatial = tuple(scan.shape[2:])
        x = torch.cat([self._prepare(net, "scan", scan), self._prepare(net, "atlas", atlas)], dim=1)

        e0 = self.ec2(self.ec1(x))
        e1 = self.ec4(self.ec3(e0))
        e2 = self.ec6(self.ec5(e1))
        e3 = self.ec8(self.ec7(e2))
        e4 = self.ec10(self.ec9(e3))

        d = self.dc2(self.dc1(torch.cat([self.up1(e4), e3], dim=1)))
        d = self.dc4(self.dc3(torch.cat([self.up2(d), e2], dim=1)))
        d = self.dc6(self.dc5(torch.cat([self.up3(d), e1], dim=1)))
        d = self.dc8(self.dc7(torch.cat([self.up4(d), e0], dim=1)))

        dtype = self._param().dtype
        with _autocast_disabled(d.device.type):
            d = d.to(dtype)
            v_st = F.softsign(self.head_st(d)) * self.range_flow
            v_ts = F.softsign(self.head_ts(d)) * self.range_flow
        return _crop(v_st, spatial), _crop(v_ts, spatial)


# --------------------------------------------------------------------------------------------
# VoxelMorph-style U-Net pieces (SegNet, InpNet)
# --------------------------------------------------------------------------------------------


def _conv_lrelu(ndim: int, cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        conv_nd(ndim)(cin, cout, kernel_size=3, stride=1, padding=1, bias=True),
        nn.LeakyReLU(0.2),
    )


class _Encoder(nn.Module):
    """One conv + LeakyReLU(0.2) per level, max pool 2 after every level.

    ``forward`` returns the per-level features before pooling (skips, shallow to deep, at
    1, 1/2, ..., 1/2**(L-1)) and the pooled bottleneck at 1/2**L.
    """

    def __init__(self, ndim: int, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        chans = [in_channels, *widths]
        self.convs = nn.ModuleList(
            _conv_lrelu(ndim, chans[i], chans[i + 1]) for i in range(len(widths))
        )
        self.pool = max_pool_nd(ndim)(2)

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        skips: list[Tensor] = []
        for conv in self.convs:
            x = conv(x)
            skips.append(x)
            x = self.pool(x)
        return skips, x


class _Decoder(nn.Module):
    """Conv + LeakyReLU, nearest x2 upsampling and skip concatenation per level, then full-res
    convs and a linear 3x3(x3) head to one channel.

    ``dec[:L]`` are the up-path convs (L = number of skip levels), ``dec[L:]`` the full-resolution
    convs.
    """

    def __init__(
        self,
        ndim: int,
        bottleneck_channels: int,
        skip_channels: Sequence[int],
        dec: Sequence[int],
    ) -> None:
        super().__init__()
        n_levels = len(skip_channels)
        up_convs = []
        cin = bottleneck_channels
        for i in range(n_levels):
            up_convs.append(_conv_lrelu(ndim, cin, dec[i]))
            cin = dec[i] + skip_channels[n_levels - 1 - i]
        self.up_convs = nn.ModuleList(up_convs)
        full = []
        for w in dec[n_levels:]:
            full.append(_conv_lrelu(ndim, cin, w))
            cin = w
        self.full_convs = nn.ModuleList(full)
        self.head = conv_nd(ndim)(cin, 1, kernel_size=3, padding=1, bias=True)

    def forward(self, x: Tensor, skips: Sequence[Tensor]) -> Tensor:
        for conv, skip in zip(self.up_convs, reversed(skips), strict=True):
            x = F.interpolate(conv(x), scale_factor=2.0, mode="nearest")
            x = torch.cat([x, skip], dim=1)
        for conv in self.full_convs:
            x = conv(x)
        return self.head(x)


def _check_unet_widths(enc: Sequence[int], dec: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    enc_t = _check_widths("enc", enc)
    dec_t = _check_widths("dec", dec)
    if 2 ** len(enc_t) != SIZE_MULTIPLE:
        raise ValueError(
            f"enc must have {int(math.log2(SIZE_MULTIPLE))} levels (inputs are padded to a "
            f"multiple of {SIZE_MULTIPLE}), got {len(enc_t)}: {enc!r}"
        )
    if len(dec_t) < len(enc_t):
        raise ValueError(
            f"dec needs at least len(enc)={len(enc_t)} widths (one per up level, then the "
            f"full-resolution convs), got {len(dec_t)}: {dec!r}"
        )
    return enc_t, dec_t


class SegNet(_NetBase):
    """Lesion segmentation U-Net (SegNet θ of GIRNet), VoxelMorph style.

    Source: Liu & Gu, GIRNet (MICCAI 2023; arXiv App. B), reference ``MaskG`` built on the
    VoxelMorph U-Net (Balakrishnan et al., TMI 2019). Every conv is 3x3(x3), stride 1, padding 1,
    bias, followed by LeakyReLU(0.2); no normalisation. With the default widths (3D)::

        encoder  1->16 @1, pool, 16->32 @1/2, pool, 32->64 @1/4, pool, 64->128 @1/8, pool
        decoder  128->128 @1/16, up, cat 128 | 256->64 @1/8, up, cat 64 | 128->32 @1/4, up,
                 cat 32 | 64->32 @1/2, up, cat 16 (48 ch @1)
        full-res 48->32, 32->16, 16->16; head 16->1 (3x3(x3)) + Sigmoid

    (upsampling = nearest x2). 1,404,561 parameters for ``ndim=3`` and the default widths.
    Initialisation: conv weights ~ N(0, 0.02), biases 0.

    Parameters
    ----------
    ndim
        2 or 3.
    enc
        Widths of the 4 encoder levels.
    dec
        Widths of the 4 up-path convs followed by the full-resolution convs.
    init_bias
        Initial bias of the output conv (reference: 0, i.e. a 0.5 probability everywhere).
        A negative value (e.g. -3, probability 0.05) starts the mutual-information game from
        "no lesion", which is much more stable in short schedules: the mask then grows only
        where inpainting fails, instead of flipping the whole brain across 0.5 at once.
    seed
        If given, weights are drawn from a ``torch.Generator`` seeded with it (global RNG
        untouched); ``None`` uses the global RNG.

    Notes
    -----
    Any spatial size: inputs are zero-padded at the high end to a multiple of 16, outputs are
    cropped back. Outputs are returned in the parameter dtype (float32 by default), also under
    ``torch.autocast``.
    """

    def __init__(
        self,
        ndim: int = 3,
        enc: Sequence[int] = (16, 32, 64, 128),
        dec: Sequence[int] = (128, 64, 32, 32, 32, 16, 16),
        *,
        init_bias: float = 0.0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.ndim = _check_ndim(ndim)
        self.enc_widths, self.dec_widths = _check_unet_widths(enc, dec)
        generator = _make_generator(seed)
        with _isolated_rng(seed):
            self.encoder = _Encoder(ndim, 1, self.enc_widths)
            self.decoder = _Decoder(ndim, self.enc_widths[-1], self.enc_widths, self.dec_widths)
        _init_normal(self, 0.02, generator)
        if init_bias:
            with torch.no_grad():
                _param(self.decoder.head.bias).fill_(float(init_bias))

    def extra_repr(self) -> str:
        return f"ndim={self.ndim}, enc={self.enc_widths}, dec={self.dec_widths}"

    def forward_logits(self, scan: Tensor) -> Tensor:
        """Pre-sigmoid lesion logits, ``(B, 1, *spatial)``, for a numerically stable BCE.

        Parameters
        ----------
        scan
            ``(B, 1, *spatial)`` intensities in [0, 1].

        Raises
        ------
        NetInputError
            (a ``ValueError``) for a non-tensor, wrong rank / channel count, empty, integer or
            wrong-device input.
        """
        net = "SegNet"
        _check_input(net, "scan", scan, self.ndim, 1)
        spatial = tuple(scan.shape[2:])
        x = self._prepare(net, "scan", scan)
        skips, bottom = self.encoder(x)
        logits = self.decoder(bottom, skips).to(self._param().dtype)
        return _crop(logits, spatial)

    def forward(self, scan: Tensor) -> Tensor:
        """Lesion probability ``sigmoid(forward_logits(scan))``, ``(B, 1, *spatial)`` in [0, 1].

        See :meth:`forward_logits` for the input and the errors raised.
        """
        return torch.sigmoid(self.forward_logits(scan))


class InpNet(_NetBase):
    """Two-encoder inpainting U-Net (InpNet ϕ of GIRNet), linear output.

    Source: Liu & Gu, GIRNet (MICCAI 2023), reference ``Inpainter2`` built from VoxelMorph U-Net
    blocks. Encoder 1 sees ``cat(masked_scan, hole_mask)`` (2 channels), encoder 2 sees the atlas
    warped onto the scan (1 channel); both have the SegNet encoder structure (conv 3x3(x3) +
    LeakyReLU(0.2) per level, max pool 2 after each level). The per-level skip features and the
    two bottlenecks are fused by channel concatenation (encoder 1 first), and one decoder with
    doubled skip channels follows. With the default widths (3D)::

        encoders 16 @1, 32 @1/2, 64 @1/4, 64 @1/8, pool (each)  -> bottleneck 64+64 @1/16
        decoder  128->64 @1/16, up, cat 128 | 192->64 @1/8, up, cat 128 | 192->32 @1/4, up,
                 cat 64 | 96->32 @1/2, up, cat 32 (64 ch @1)
        full-res 64->32, 32->16, 16->16; head 16->1 (3x3(x3)), no activation

    1,239,585 parameters for ``ndim=3`` and the default widths. Initialisation: conv weights
    ~ N(0, 0.02), biases 0. No normalisation layers.

    Parameters
    ----------
    ndim
        2 or 3.
    enc
        Widths of the 4 levels of each encoder.
    dec
        Widths of the 4 up-path convs followed by the full-resolution convs.
    seed
        If given, weights are drawn from a ``torch.Generator`` seeded with it (global RNG
        untouched); ``None`` uses the global RNG.

    Notes
    -----
    Any spatial size (padded to a multiple of 16 internally, cropped back). The output is in the
    intensity units of the inputs and is *not* clamped (linear head). Returned in the parameter
    dtype, also under ``torch.autocast``.
    """

    def __init__(
        self,
        ndim: int = 3,
        enc: Sequence[int] = (16, 32, 64, 64),
        dec: Sequence[int] = (64, 64, 32, 32, 32, 16, 16),
        *,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.ndim = _check_ndim(ndim)
        self.enc_widths, self.dec_widths = _check_unet_widths(enc, dec)
        generator = _make_generator(seed)
        with _isolated_rng(seed):
            self.encoder_scan = _Encoder(ndim, 2, self.enc_widths)
            self.encoder_atlas = _Encoder(ndim, 1, self.enc_widths)
            self.decoder = _Decoder(
                ndim,
                2 * self.enc_widths[-1],
                [2 * w for w in self.enc_widths],
                self.dec_widths,
            )
        _init_normal(self, 0.02, generator)

    def extra_repr(self) -> str:
        return f"ndim={self.ndim}, enc={self.enc_widths}, dec={self.dec_widths}"

    def forward(self, masked_scan: Tensor, hole_mask: Tensor, atlas_warped: Tensor) -> Tensor:
        """Inpaint the hole of the scan.

        Parameters
        ----------
        masked_scan
            ``(B, 1, *spatial)``: the scan with the region to fill set to 0 (``S * (1 - M)``).
        hole_mask
            ``(B, 1, *spatial)``: 1 where the network must fill in, 0 elsewhere (float).
        atlas_warped
            ``(B, 1, *spatial)``: the atlas warped onto the scan grid (``warp(atlas, phi_ts)``).

        Returns
        -------
        Tensor
            ``(B, 1, *spatial)`` inpainted image over the whole grid (linear output; callers
            composite ``S * (1 - M) + out * M`` when the known part must be kept).

        Raises
        ------
        NetInputError
            (a ``ValueError``) for a non-tensor, wrong rank / channel count, empty, integer or
            wrong-device input, or a batch size / spatial shape that differs between inputs.
        """
        net = "InpNet"
        _check_input(net, "masked_scan", masked_scan, self.ndim, 1)
        _check_input(net, "hole_mask", hole_mask, self.ndim, 1)
        _check_input(net, "atlas_warped", atlas_warped, self.ndim, 1)
        _check_same_geometry(net, "masked_scan", masked_scan, "hole_mask", hole_mask)
        _check_same_geometry(net, "masked_scan", masked_scan, "atlas_warped", atlas_warped)
        spatial = tuple(masked_scan.shape[2:])
        x1 = torch.cat(
            [
                self._prepare(net, "masked_scan", masked_scan),
                self._prepare(net, "hole_mask", hole_mask),
            ],
            dim=1,
        )
        x2 = self._prepare(net, "atlas_warped", atlas_warped)
        skips1, bottom1 = self.encoder_scan(x1)
        skips2, bottom2 = self.encoder_atlas(x2)
        skips = [torch.cat([a, b], dim=1) for a, b in zip(skips1, skips2, strict=True)]
        out = self.decoder(torch.cat([bottom1, bottom2], dim=1), skips)
        return _crop(out.to(self._param().dtype), spatial)
