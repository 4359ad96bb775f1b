"""Unit tests for napari_girnet.core.nets (RegNet, SegNet, InpNet)."""

from __future__ import annotations

import pytest
import torch

from napari_girnet.core.nets import (
    InpNet,
    NetInputError,
    RegNet,
    SegNet,
    conv_nd,
    conv_transpose_nd,
    count_parameters,
    max_pool_nd,
)

# Tiny widths keep every forward/backward well under a second on 2 CPU cores.
TINY_ENC = (4, 4, 8, 8)
TINY_DEC = (8, 8, 4, 4, 4, 4, 4)
TINY_C = 2

# Spatial sizes that are not multiples of 16 (and partly below 16).
SHAPES = {2: (40, 52), 3: (20, 24, 18)}
SMALL_SHAPES = {2: (5, 7), 3: (3, 5, 7)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and immune to oversubscription on shared CPUs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _reg(ndim: int, **kw) -> RegNet:
    return RegNet(ndim, start_channels=TINY_C, **kw)


def _seg(ndim: int, **kw) -> SegNet:
    return SegNet(ndim, enc=TINY_ENC, dec=TINY_DEC, **kw)


def _inp(ndim: int, **kw) -> InpNet:
    return InpNet(ndim, enc=TINY_ENC, dec=TINY_DEC, **kw)


def _rand(batch: int, spatial: tuple[int, ...], channels: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((batch, channels, *spatial), generator=g)


def _run(net: torch.nn.Module, x: torch.Tensor):
    """Forward with the right number of inputs, built from ``x`` (B, 1, *spatial)."""
    if isinstance(net, RegNet):
        return net(x, x.flip(0) * 0.5 + 0.1)
    if isinstance(net, InpNet):
        hole = (x > 0.7).to(x.dtype)
        return net(x * (1 - hole), hole, 1 - x)
    return net(x)


# --------------------------------------------------------------------------------------------
# Architecture: exact parameter counts and layer tables
# --------------------------------------------------------------------------------------------


def test_param_counts_default_3d():
    assert count_parameters(RegNet()) == 862_351
    assert count_parameters(SegNet()) == 1_404_561
    assert count_parameters(InpNet()) == 1_239_585


def test_count_parameters_trainable_only():
    net = _seg(2)
    total = count_parameters(net)
    net.decoder.head.weight.requires_grad_(False)
    frozen = net.decoder.head.weight.numel()
    assert count_parameters(net, trainable_only=True) == total - frozen
    assert count_parameters(net) == total


def test_regnet_layer_table_c7():
    net = RegNet(3, start_channels=7)
    expected = {
        "ec1": (2, 7, 1), "ec2": (7, 7, 1), "ec3": (7, 14, 2), "ec4": (14, 14, 1),
        "ec5": (14, 28, 2), "ec6": (28, 28, 1), "ec7": (28, 56, 2), "ec8": (56, 56, 1),
        "ec9": (56, 112, 2), "ec10": (112, 56, 1),
        "dc1": (112, 56, 1), "dc2": (56, 28, 1), "dc3": (56, 28, 1), "dc4": (28, 14, 1),
        "dc5": (28, 28, 1), "dc6": (28, 14, 1), "dc7": (21, 14, 1), "dc8": (14, 14, 1),
    }  # fmt: skip
    for name, (cin, cout, stride) in expected.items():
        conv = getattr(net, name)[0]
        assert isinstance(conv, torch.nn.Conv3d)
        assert (conv.in_channels, conv.out_channels, conv.stride[0]) == (cin, cout, stride), name
        assert conv.kernel_size == (3, 3, 3) and conv.bias is not None
        assert isinstance(getattr(net, name)[1], torch.nn.ReLU)
    for name, ch in {"up1": 56, "up2": 28, "up3": 14, "up4": 14}.items():
        up = getattr(net, name)[0]
        assert isinstance(up, torch.nn.ConvTranspose3d)
        assert (up.in_channels, up.out_channels, up.kernel_size, up.stride) == (
            ch, ch, (2, 2, 2), (2, 2, 2),
        )  # fmt: skip
    for head in (net.head_st, net.head_ts):
        assert (head.in_channels, head.out_channels, head.kernel_size) == (14, 3, (5, 5, 5))
        assert head.padding == (2, 2, 2) and head.bias is None


@pytest.mark.parametrize("net_cls", [RegNet, SegNet, InpNet])
def test_no_normalisation_layers(net_cls):
    norm_types = (
        torch.nn.modules.batchnorm._BatchNorm,
        torch.nn.modules.instancenorm._InstanceNorm,
        torch.nn.GroupNorm,
        torch.nn.LayerNorm,
    )
    assert not any(isinstance(m, norm_types) for m in net_cls(2).modules())


def test_dimension_helpers():
    assert conv_nd(2) is torch.nn.Conv2d and conv_nd(3) is torch.nn.Conv3d
    assert conv_transpose_nd(2) is torch.nn.ConvTranspose2d
    assert conv_transpose_nd(3) is torch.nn.ConvTranspose3d
    assert max_pool_nd(2) is torch.nn.MaxPool2d and max_pool_nd(3) is torch.nn.MaxPool3d
    with pytest.raises(ValueError, match="ndim must be 2 or 3"):
        conv_nd(1)


def test_2d_nets_use_2d_layers():
    for net in (RegNet(2), SegNet(2), InpNet(2)):
        convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d | torch.nn.Conv2d)]
        assert convs and all(isinstance(m, torch.nn.Conv2d) for m in convs)


# --------------------------------------------------------------------------------------------
# Shapes, ranges, activations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("shapes", [SHAPES, SMALL_SHAPES], ids=["odd", "below16"])
def test_output_shapes_any_size(ndim, shapes):
    spatial = shapes[ndim]
    x = _rand(2, spatial)
    torch.manual_seed(0)
    v_st, v_ts = _run(_reg(ndim), x)
    assert v_st.shape == v_ts.shape == (2, ndim, *spatial)
    p = _run(_seg(ndim), x)
    assert p.shape == (2, 1, *spatial)
    out = _run(_inp(ndim), x)
    assert out.shape == (2, 1, *spatial)
    for t in (v_st, v_ts, p, out):
        assert t.dtype == torch.float32
        assert torch.isfinite(t).all()


def test_multiple_of_16_input_is_not_padded():
    x = _rand(1, (16, 32))
    torch.manual_seed(0)
    p = _seg(2)(x)
    assert p.shape == (1, 1, 16, 32) and p.is_contiguous()


def test_batch_items_are_independent():
    torch.manual_seed(0)
    net = _reg(2)
    a, b = _rand(2, SHAPES[2], seed=1), _rand(2, SHAPES[2], seed=2)
    v_st, v_ts = net(a, b)
    v_st1, v_ts1 = net(a[1:], b[1:])
    torch.testing.assert_close(v_st[1:], v_st1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v_ts[1:], v_ts1, rtol=1e-5, atol=1e-5)


def test_regnet_inputs_order_matters():
    torch.manual_seed(0)
    net = _reg(2)
    a, b = _rand(1, SHAPES[2], seed=1), _rand(1, SHAPES[2], seed=2)
    v_st, _ = net(a, b)
    v_st_swapped, _ = net(b, a)
    assert not torch.allclose(v_st, v_st_swapped)


def test_segnet_probability_range_and_logits():
    torch.manual_seed(0)
    net = _seg(3)
    with torch.no_grad():
        net.decoder.head.weight.mul_(1e6)  # push the sigmoid into saturation both ways
    x = _rand(2, SHAPES[3])
    p = net(x)
    assert p.min() >= 0.0 and p.max() <= 1.0
    logits = net.forward_logits(x)
    assert logits.shape == p.shape
    assert logits.min() < -5 and logits.max() > 5
    torch.testing.assert_close(p, torch.sigmoid(logits))


def test_regnet_velocity_bounded_by_range_flow():
    torch.manual_seed(0)
    net = _reg(2, range_flow=2.5)
    with torch.no_grad():
        net.head_st.weight.mul_(1e4)
        net.head_ts.weight.mul_(1e4)
    v_st, v_ts = _run(net, _rand(2, SHAPES[2]))
    for v in (v_st, v_ts):
        assert v.abs().max() <= 2.5
        assert v.abs().max() > 2.0  # saturates towards range_flow: output is scaled by it


def test_regnet_default_range_flow_is_100_voxels():
    net = RegNet(2, start_channels=TINY_C)
    assert net.range_flow == 100.0
    with torch.no_grad():
        net.head_st.weight.mul_(1e4)
    v_st, _ = _run(net, _rand(1, SHAPES[2]))
    assert 50.0 < v_st.abs().max() <= 100.0


def test_inpnet_output_is_linear():
    torch.manual_seed(0)
    net = _inp(2)
    with torch.no_grad():
        net.decoder.head.weight.zero_()
        net.decoder.head.bias.fill_(3.7)
    out = _run(net, _rand(2, SHAPES[2]))
    torch.testing.assert_close(out, torch.full_like(out, 3.7))  # no activation after the head
    with torch.no_grad():
        net.decoder.head.bias.fill_(-2.0)
    assert _run(net, _rand(2, SHAPES[2])).max() < 0


def test_segnet_inpnet_init_normal_002():
    torch.manual_seed(0)
    for net in (SegNet(3), InpNet(3)):
        weights = torch.cat(
            [m.weight.flatten() for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
        )
        assert abs(weights.std().item() - 0.02) < 1e-3
        assert abs(weights.mean().item()) < 1e-3
        for m in net.modules():
            if isinstance(m, torch.nn.Conv3d):
                assert torch.count_nonzero(m.bias) == 0


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("factory", [_reg, _seg, _inp], ids=["reg", "seg", "inp"])
def test_gradients_reach_every_parameter(ndim, factory):
    torch.manual_seed(0)
    net = factory(ndim)
    out = _run(net, _rand(2, SHAPES[ndim]))
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum(((o - 0.3) ** 2).mean() for o in outs)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_gradient_wrt_input():
    torch.manual_seed(0)
    x = _rand(1, SHAPES[2]).requires_grad_(True)
    _seg(2)(x).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape and x.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("factory", [_reg, _seg, _inp], ids=["reg", "seg", "inp"])
def test_same_global_seed_same_init_and_output(factory):
    torch.manual_seed(123)
    a = factory(3)
    torch.manual_seed(123)
    b = factory(3)
    assert _state_equal(a, b)
    x = _rand(1, SHAPES[3])
    out_a, out_b = _run(a, x), _run(b, x)
    for oa, ob in zip(
        out_a if isinstance(out_a, tuple) else (out_a,),
        out_b if isinstance(out_b, tuple) else (out_b,),
        strict=True,
    ):
        assert torch.equal(oa, ob)


@pytest.mark.parametrize("factory", [_reg, _seg, _inp], ids=["reg", "seg", "inp"])
def test_seed_argument_is_reproducible_and_isolated(factory):
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    a = factory(2, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)  # global RNG untouched
    b = factory(2, seed=5)
    c = factory(2, seed=6)
    assert _state_equal(a, b)
    assert not _state_equal(a, c)


def test_regnet_seeded_init_follows_pytorch_default_bounds():
    net = _reg(3, seed=0)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d):
            fan_in = m.weight.shape[1] * m.weight[0, 0].numel()
            bound = fan_in**-0.5
            assert m.weight.abs().max() <= bound
            assert m.weight.abs().max() > 0.5 * bound


# --------------------------------------------------------------------------------------------
# Memory format and autocast
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("factory", [_reg, _seg, _inp], ids=["reg", "seg", "inp"])
def test_channels_last_matches_contiguous(ndim, factory):
    torch.manual_seed(0)
    net = factory(ndim)
    x = _rand(2, SHAPES[ndim])
    fmt = torch.channels_last_3d if ndim == 3 else torch.channels_last
    x_cl = x.to(memory_format=fmt)
    assert x_cl.is_contiguous(memory_format=fmt)
    ref = _run(net, x)
    got = _run(net, x_cl)
    ref = ref if isinstance(ref, tuple) else (ref,)
    got = got if isinstance(got, tuple) else (got,)
    for r, g in zip(ref, got, strict=True):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=0, atol=1e-5)


@pytest.mark.parametrize("factory", [_reg, _seg, _inp], ids=["reg", "seg", "inp"])
def test_autocast_bf16_returns_float32(factory):
    torch.manual_seed(0)
    net = factory(3)
    x = _rand(2, SHAPES[3])
    ref = _run(net, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _run(net, x)
    ref = ref if isinstance(ref, tuple) else (ref,)
    got = got if isinstance(got, tuple) else (got,)
    for r, g in zip(ref, got, strict=True):
        assert g.dtype == torch.float32 and g.shape == r.shape
        assert torch.isfinite(g).all()
        scale = r.abs().max().item() + 1e-3
        assert (g - r).abs().max().item() < 0.1 * scale


def test_double_module_accepts_float32_input():
    torch.manual_seed(0)
    net = _seg(2).double()
    out = net(_rand(1, SHAPES[2]))
    assert out.dtype == torch.float64


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------


def test_regnet_bad_inputs():
    net = _reg(3)
    good = _rand(2, SHAPES[3])
    with pytest.raises(NetInputError, match=r"5D tensor .* got shape \(2, 1, 20, 24\)"):
        net(good[..., 0], good[..., 0])
    with pytest.raises(
        ValueError, match=r"`scan` must have 1 channel.*got shape \(2, 2, 20, 24, 18\)"
    ):
        net(torch.cat([good, good], 1), good)
    with pytest.raises(ValueError, match=r"batch size mismatch.*\(B=2\).*\(B=1\)"):
        net(good, good[:1])
    with pytest.raises(
        ValueError,
        match=r"spatial shape mismatch: expected `atlas` spatial shape \(20, 24, 18\).*"
        r"got \(20, 24, 17\)",
    ):
        net(good, good[..., :17])
    with pytest.raises(ValueError, match=r"must be a torch\.Tensor"):
        net(good.numpy(), good)
    with pytest.raises(ValueError, match="floating point"):
        net(good, (good > 0.5).to(torch.uint8))
    with pytest.raises(ValueError, match="non-empty"):
        net(good[:0], good[:0])


def test_segnet_bad_inputs():
    net = _seg(2)
    with pytest.raises(ValueError, match=r"\(ndim=2\).*4D tensor.*got shape \(1, 1, 8, 8, 8\)"):
        net(torch.rand(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match=r"1 channel.*got shape \(1, 3, 8, 8\)"):
        net.forward_logits(torch.rand(1, 3, 8, 8))


def test_inpnet_bad_inputs():
    net = _inp(2)
    x = _rand(2, SHAPES[2])
    with pytest.raises(ValueError, match=r"`hole_mask` must have 1 channel"):
        net(x, torch.cat([x, x], 1), x)
    with pytest.raises(ValueError, match=r"batch size mismatch.*`atlas_warped`"):
        net(x, x, x[:1])
    with pytest.raises(ValueError, match=r"expected `hole_mask` spatial shape \(40, 52\)"):
        net(x, x[:, :, :39], x)


@pytest.mark.parametrize(
    ("factory", "kwargs", "match"),
    [
        (RegNet, {"ndim": 4}, "ndim must be 2 or 3"),
        (SegNet, {"ndim": 1}, "ndim must be 2 or 3"),
        (InpNet, {"ndim": True}, "ndim must be 2 or 3"),
        (RegNet, {"start_channels": 0}, "start_channels"),
        (RegNet, {"range_flow": -1.0}, "range_flow"),
        (SegNet, {"enc": (16, 32, 64)}, "enc must have 4 levels"),
        (SegNet, {"dec": (8, 8, 8)}, "dec needs at least"),
        (InpNet, {"enc": (16, 0, 8, 8)}, "positive ints"),
        (InpNet, {"seed": 1.5}, "seed must be an int"),
    ],
)
def test_bad_constructor_arguments(factory, kwargs, match):
    with pytest.raises(ValueError, match=match):
        factory(**kwargs)


def test_full_size_shapes_on_meta_device():
    """Default widths at the reference crop 160x192x144 (shape inference only, no compute)."""
    spatial = (160, 192, 144)
    with torch.device("meta"):
        reg, seg, inp = RegNet(), SegNet(), InpNet()
        x = torch.empty(1, 1, *spatial)
    v_st, v_ts = reg(x, x)
    assert v_st.shape == v_ts.shape == (1, 3, *spatial)
    assert seg(x).shape == (1, 1, *spatial)
    assert inp(x, x, x).shape == (1, 1, *spatial)
