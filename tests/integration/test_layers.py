"""Layer conversions (napari_girnet._napari.layers), checked against real napari layers."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from napari.layers import Labels, Layer

from napari_girnet._napari.layers import (
    AXIS_LABELS,
    VECTOR_STYLE,
    ObliqueResampleWarning,
    field_to_vectors,
    layer_to_volume,
    points_to_world,
    preview_to_layers,
    result_to_layers,
    volume_to_layer_data,
    world_to_points_data,
)
from napari_girnet.data.volume import Volume, VolumeError


def _layer(layer_data: tuple) -> Layer:
    data, kwargs, kind = layer_data
    return Layer.create(data, kwargs, kind)


def _world_ras(layer: Layer, data_index) -> np.ndarray:
    return np.asarray(layer.data_to_world(np.asarray(data_index, dtype=float)))[::-1]


# ----------------------------------------------------------------------------- volumes
def test_volume_layer_round_trip(tiny_anatomy, reorient_array) -> None:
    las, las_affine = reorient_array(tiny_anatomy.array, tiny_anatomy.affine, "LAS")
    vol = Volume(las, las_affine, name="las", meta={"path": "/x/las.nii.gz", "dtype": "int16"})
    data, kwargs, kind = volume_to_layer_data(vol, "scan", opacity=0.7)
    assert kind == "image"
    assert data.shape == tiny_anatomy.shape[::-1]
    np.testing.assert_allclose(kwargs["scale"], (3.0, 1.5, 2.0))
    np.testing.assert_allclose(kwargs["translate"], tiny_anatomy.affine[:3, 3][::-1])
    assert kwargs["axis_labels"] == AXIS_LABELS
    assert kwargs["units"] == ("mm", "mm", "mm")
    assert kwargs["opacity"] == 0.7
    meta = kwargs["metadata"]["girnet"]
    assert meta["axcodes"] == ["L", "A", "S"]
    assert meta["kind"] == "image"
    assert meta["path"] == "/x/las.nii.gz"
    np.testing.assert_allclose(meta["source_affine"], las_affine)

    layer = _layer((data, kwargs, kind))
    back = layer_to_volume(layer)
    assert back.name == "scan"
    np.testing.assert_array_equal(back.array, tiny_anatomy.array)
    np.testing.assert_array_equal(back.affine, tiny_anatomy.affine)
    np.testing.assert_array_equal(back.source_affine, las_affine)
    assert back.meta["dtype"] == "int16"
    # world position of the marker through napari == through the affine
    np.testing.assert_allclose(
        _world_ras(layer, tiny_anatomy.marker_ijk[::-1]), tiny_anatomy.marker_world
    )
    # the same from data + metadata only (what npe2 writers receive)
    again = layer_to_volume(data, metadata=kwargs["metadata"])
    np.testing.assert_array_equal(again.affine, tiny_anatomy.affine)


def test_layer_to_volume_without_metadata_uses_scale_translate(tiny_anatomy) -> None:
    data = tiny_anatomy.array.transpose(2, 1, 0)
    vol = layer_to_volume(data, scale=(3.0, 1.5, 2.0), translate=(4.5, -21.0, -9.0), name="x")
    np.testing.assert_allclose(vol.affine, tiny_anatomy.affine)
    assert vol.source_affine is None
    np.testing.assert_array_equal(vol.array, tiny_anatomy.array)
    # metadata whose recorded shape does not match the data is not trusted
    _, kwargs, _ = volume_to_layer_data(Volume(tiny_anatomy.array, np.eye(4)), "other")
    vol = layer_to_volume(
        data[:, :, :5], metadata=kwargs["metadata"], scale=(1, 1, 1), translate=(7, 8, 9)
    )
    np.testing.assert_allclose(vol.affine[:3, 3], (9, 8, 7))


@pytest.mark.parametrize("shape", [(5, 6), (2, 3, 4, 5)])
def test_layer_to_volume_rejects_non_3d(shape) -> None:
    layer = Layer.create(np.zeros(shape, dtype=np.float32), {"name": "bad layer"}, "image")
    with pytest.raises(VolumeError, match="bad layer"):
        layer_to_volume(layer)
    with pytest.raises(VolumeError, match="'plain'"):
        layer_to_volume(np.zeros(shape), name="plain")


def test_labels_kind_gives_writable_integers(tiny_anatomy) -> None:
    mask = tiny_anatomy.array == tiny_anatomy.marker_value
    mask.flags.writeable = False
    data, kwargs, kind = volume_to_layer_data(Volume(mask, tiny_anatomy.affine), "m", "labels")
    assert kind == "labels"
    assert data.dtype == np.uint8 and data.flags.writeable
    assert int(data.sum()) == 27
    layer = _layer((data, kwargs, kind))
    assert type(layer).__name__ == "Labels"
    with pytest.raises(ValueError, match="kind"):
        volume_to_layer_data(Volume(mask, tiny_anatomy.affine), "m", "vectors")


def test_oblique_volume_is_resampled_with_a_warning(tiny_anatomy) -> None:
    rot = nib.eulerangles.euler2mat(np.radians(10.0), 0.0, 0.0)  # 10 degrees about S
    affine = tiny_anatomy.affine.copy()
    affine[:3, :3] = rot @ affine[:3, :3]
    vol = Volume(tiny_anatomy.array, affine, name="oblique scan")
    with pytest.warns(ObliqueResampleWarning, match="oblique scan.*10.00 degrees"):
        data, kwargs, _ = volume_to_layer_data(vol, "obl")
    meta = kwargs["metadata"]["girnet"]
    disp_affine = np.asarray(meta["affine"])
    np.testing.assert_allclose(disp_affine[:3, :3], np.diag([2.0, 1.5, 3.0]), atol=1e-12)
    assert meta["resampled_from_oblique_deg"] == pytest.approx(10.0, abs=1e-6)
    np.testing.assert_allclose(meta["source_affine"], affine)
    np.testing.assert_allclose(kwargs["scale"], (3.0, 1.5, 2.0))
    assert tuple(meta["shape"]) == data.shape
    # the grid covers the field of view: every original voxel centre is inside it
    corners = np.array(np.meshgrid([0, 9], [0, 11], [0, 7], indexing="ij")).reshape(3, -1).T
    world = nib.affines.apply_affine(affine, corners)
    vox = nib.affines.apply_affine(np.linalg.inv(disp_affine), world)
    assert vox.min() > -1e-6
    assert np.all(vox.max(axis=0) <= np.array(data.shape[::-1]) - 1 + 1e-6)
    # the marker stays where it was (within a voxel), as seen through napari
    layer = _layer((data, kwargs, "image"))
    peak = np.unravel_index(np.argmax(np.asarray(layer.data)), layer.data.shape)
    marker = nib.affines.apply_affine(affine, tiny_anatomy.marker_ijk)
    assert np.linalg.norm(_world_ras(layer, peak) - marker) < 3.5
    # back to a Volume: axis-aligned, writable with the source orientation
    back = layer_to_volume(layer)
    assert back.obliquity_deg == pytest.approx(0.0)
    np.testing.assert_allclose(back.source_affine, affine)


def test_tiny_obliquity_is_displayed_as_is(tiny_anatomy, recwarn) -> None:
    rot = nib.eulerangles.euler2mat(np.radians(0.05), 0.0, 0.0)
    affine = tiny_anatomy.affine.copy()
    affine[:3, :3] = rot @ affine[:3, :3]
    data, kwargs, _ = volume_to_layer_data(Volume(tiny_anatomy.array, affine), "almost")
    assert not [w for w in recwarn if issubclass(w.category, ObliqueResampleWarning)]
    assert data.shape == tiny_anatomy.shape[::-1]
    np.testing.assert_allclose(kwargs["metadata"]["girnet"]["affine"], affine)


# ----------------------------------------------------------------------------- vectors
@pytest.mark.parametrize("code", ["RAS", "LPS"])
def test_constant_field_vectors(tiny_anatomy, reorient_array, code: str) -> None:
    array, affine = reorient_array(tiny_anatomy.array, tiny_anatomy.affine, code)
    grid = Volume(array, affine, name="grid")
    d_mm = np.array([4.0, -3.0, 6.0])
    field = np.broadcast_to(d_mm[:, None, None, None], (3, *grid.shape)).astype(np.float32)
    data, kwargs, kind = field_to_vectors(field, grid, stride=3)
    assert kind == "vectors"
    assert data.shape == (3 * 4 * 3, 2, 3)  # len(range(1, n, 3)) for n = 10, 12, 8
    # projection in voxels of the displayed (S, A, R) grid: (6/3, -3/1.5, 4/2)
    np.testing.assert_allclose(data[:, 1], np.tile([2.0, -2.0, 2.0], (len(data), 1)), atol=1e-5)
    # start points are voxel indices (z, y, x) of the displayed grid on the stride grid
    assert set(np.unique(data[:, 0, 2])) == {1.0, 4.0, 7.0}
    np.testing.assert_allclose(kwargs["features"]["magnitude_mm"], np.linalg.norm(d_mm), rtol=1e-6)
    assert kwargs["edge_color"] == "magnitude_mm"
    assert kwargs["edge_colormap"] == "viridis"
    assert kwargs["vector_style"] == VECTOR_STYLE == "arrow"
    image_kwargs = volume_to_layer_data(grid, "grid")[1]
    np.testing.assert_allclose(kwargs["scale"], image_kwargs["scale"])
    np.testing.assert_allclose(kwargs["translate"], image_kwargs["translate"])
    layer = _layer((data, kwargs, kind))
    start, proj = layer.data[5]
    moved = _world_ras(layer, start + proj) - _world_ras(layer, start)
    np.testing.assert_allclose(moved, d_mm, atol=1e-5)


def test_vectors_mask_and_threshold(tiny_anatomy) -> None:
    grid = Volume(tiny_anatomy.array, tiny_anatomy.affine)
    field = np.zeros((3, *grid.shape), dtype=np.float32)
    field[0, :5] = 2.0  # R half moves by 2 mm along R
    all_vectors = field_to_vectors(field, grid, stride=1)[0]
    assert len(all_vectors) == np.prod(grid.shape)
    moving = field_to_vectors(field, grid, stride=1, min_mm=0.5)[0]
    assert len(moving) == 5 * 12 * 8
    mask = np.zeros(grid.shape, dtype=bool)
    mask[1, 1, 1] = mask[4, 4, 4] = True
    data = field_to_vectors(field, grid, stride=1, mask=mask)[0]
    np.testing.assert_allclose(data[:, 0], [[1, 1, 1], [4, 4, 4]])
    empty = field_to_vectors(field, grid, stride=2, mask=np.zeros(grid.shape))
    assert empty[0].shape == (0, 2, 3)
    assert type(_layer(empty)).__name__ == "Vectors"
    with pytest.raises(VolumeError, match="field must have shape"):
        field_to_vectors(field[:, :4], grid)
    with pytest.raises(VolumeError, match="mask shape"):
        field_to_vectors(field, grid, mask=mask[:4])


# ----------------------------------------------------------------------------- points
def test_points_world_round_trip(tiny_anatomy) -> None:
    world = np.array([tiny_anatomy.marker_world, [1.0, 2.0, 3.0]])
    plain = _layer(world_to_points_data(["a", "b"], world))
    assert plain.scale.tolist() == [1.0, 1.0, 1.0]
    ids, back = points_to_world(plain)
    assert ids == ("a", "b")
    np.testing.assert_allclose(back, world)
    image = _layer(volume_to_layer_data(Volume(tiny_anatomy.array, tiny_anatomy.affine), "img"))
    on_image = _layer(world_to_points_data(None, world, image, name="lm"))
    np.testing.assert_allclose(on_image.data[0], tiny_anatomy.marker_ijk[::-1])
    ids, back = points_to_world(on_image)
    assert ids == ("1", "2")
    np.testing.assert_allclose(back, world)
    via_meta = world_to_points_data(None, world, image.metadata)
    np.testing.assert_allclose(via_meta[0], on_image.data)
    empty = _layer(world_to_points_data([], np.zeros((0, 3))))
    assert points_to_world(empty)[1].shape == (0, 3)


# ----------------------------------------------------------------------------- results
def _fake_result(tiny_anatomy, reorient_array, tmp_path: Path):
    torch = pytest.importorskip("torch")
    from napari_girnet.api import RegistrationResult
    from napari_girnet.core.config import preset
    from napari_girnet.core.model import Prediction
    from napari_girnet.data.atlas import Atlas
    from napari_girnet.data.preprocess import AffineAlignment, PreparedScan

    las, las_affine = reorient_array(tiny_anatomy.array, tiny_anatomy.affine, "LAS")
    scan = Volume(las, las_affine, name="scan").canonical()
    shape = scan.shape
    atlas_affine = np.diag([4.0, 4.0, 4.0, 1.0])
    atlas_affine[:3, 3] = (-20.0, -30.0, -10.0)
    atlas_img = Volume(np.ones((6, 7, 5), dtype=np.float32) * 0.5, atlas_affine, name="atlas")
    atlas = Atlas(image=atlas_img, mask=atlas_img.with_array(np.ones((6, 7, 5), bool)), preset="t")
    brain = np.zeros(shape, dtype=bool)
    brain[1:-1, 1:-1, 1:-1] = True
    prob = np.zeros(shape, dtype=np.float32)
    prob[1:4, 2:5, 0:3] = 0.9

    def on_scan(array: np.ndarray, name: str) -> Volume:
        return Volume(array, scan.affine, name=name)  # no source_affine, as resampled outputs

    jac = np.ones(shape, dtype=np.float32)
    jac[brain] = np.linspace(0.6, 1.3, int(brain.sum()), dtype=np.float32)
    t = torch.zeros((1, 1, 4, 4, 4))
    pred = Prediction(t, t > 0, t, t.repeat(1, 3, 1, 1, 1), t.repeat(1, 3, 1, 1, 1), t, t, t + 1)
    checkpoint = tmp_path / "last.pt"
    checkpoint.write_bytes(b"weights")
    field = np.zeros((3, *shape), dtype=np.float32)
    field[2] = 3.0
    return RegistrationResult(
        scan=scan,
        atlas=atlas,
        prepared=PreparedScan(
            native=scan,
            native_mask=scan.with_array(brain),
            alignment=AffineAlignment(np.eye(4)),
            image=atlas_img,
            mask=atlas.mask,
        ),
        prediction=pred,
        lesion_probability=on_scan(prob, "lesion_probability"),
        lesion_mask=on_scan((prob > 0.5).astype(np.uint8), "lesion_mask"),
        inpainted=on_scan(tiny_anatomy.array.copy(), "inpainted"),
        atlas_to_scan=on_scan(np.full(shape, 0.4, np.float32), "atlas_to_scan"),
        jacobian=on_scan(jac, "jacobian"),
        scan_to_atlas=atlas_img.with_array(np.full((6, 7, 5), 0.3, np.float32)),
        field_atlas_to_scan=field + 25.0,  # the affine part, not shown as vectors
        field_scan_to_atlas=np.zeros((3, 6, 7, 5), dtype=np.float32),
        field_nonlinear=field,
        config=preset("cpu-2mm"),
        checkpoint=checkpoint,
        provenance={"model": "in-memory model", "model_sha256": None, "device": "cpu"},
        metrics={"dice": 0.5},
    )


def test_result_to_layers(
    make_napari_viewer_proxy, tiny_anatomy, reorient_array, tmp_path: Path
) -> None:
    import hashlib

    result = _fake_result(tiny_anatomy, reorient_array, tmp_path)
    tuples = result_to_layers(result, "scan", stride=2, provenance={"input_layers": ["scan", "m"]})
    names = [kw["name"] for _, kw, _ in tuples]
    assert names == [
        "scan lesion probability",
        "scan lesion mask",
        "scan inpainted",
        "scan atlas→scan",
        "scan scan→atlas",
        "scan deformation",
        "scan Jacobian",
    ]
    kinds = [kind for _, _, kind in tuples]
    assert kinds == ["image", "labels", "image", "image", "image", "vectors", "image"]
    scan_kwargs = volume_to_layer_data(result.scan, "scan")[1]
    atlas_kwargs = volume_to_layer_data(result.atlas.image, "atlas")[1]
    for data, kw, kind in tuples:
        ref = atlas_kwargs if kw["name"].endswith("scan→atlas") else scan_kwargs
        np.testing.assert_allclose(kw["scale"], ref["scale"], err_msg=kw["name"])
        np.testing.assert_allclose(kw["translate"], ref["translate"], err_msg=kw["name"])
        if kind != "vectors":
            assert data.shape == tuple(ref["metadata"]["girnet"]["shape"]), kw["name"]
        prov = kw["metadata"]["girnet"]["provenance"]
        assert prov["napari_girnet_version"]
        assert prov["seed"] == result.config.runtime.seed
        assert prov["config"]["preset"] == "cpu-2mm"
        assert prov["device"] == "cpu"
        assert prov["input_layers"] == ["scan", "m"]
        assert prov["checkpoint_sha256"] == hashlib.sha256(b"weights").hexdigest()
    by_name = {kw["name"]: (data, kw) for data, kw, _ in tuples}
    prob = by_name["scan lesion probability"][1]
    assert prob["colormap"] in ("magma", "inferno")
    assert prob["blending"] == "additive"
    assert tuple(prob["contrast_limits"]) == (0.0, 1.0)
    lo, hi = by_name["scan Jacobian"][1]["contrast_limits"]
    assert (lo + hi) / 2 == pytest.approx(1.0)
    assert hi - 1.0 == pytest.approx(0.4, abs=0.02)  # 99th percentile of |J - 1| in the brain
    # native-grid results write back in the scan file's orientation
    src = by_name["scan lesion mask"][1]["metadata"]["girnet"]["source_affine"]
    np.testing.assert_allclose(src, result.scan.source_affine)
    vectors, vkw = by_name["scan deformation"]
    assert len(vectors) > 0
    np.testing.assert_allclose(vectors[:, 1], np.tile([1.0, 0.0, 0.0], (len(vectors), 1)))
    assert vkw["metadata"]["girnet"]["role"] == "deformation"

    viewer = make_napari_viewer_proxy()
    scan_layer = viewer.add_image(*volume_to_layer_data(result.scan, "scan")[:1], **scan_kwargs)
    for t in tuples:
        viewer.add_layer(_layer(t))
    assert len(viewer.layers) == 8
    mask_layer = viewer.layers["scan lesion mask"]
    assert isinstance(mask_layer, Labels)
    assert viewer.layers["scan Jacobian"].colormap.name == "PiYG"
    # a result voxel and the scan voxel with the same index coincide in the world
    np.testing.assert_allclose(
        mask_layer.data_to_world((1, 2, 3)), scan_layer.data_to_world((1, 2, 3))
    )


def test_preview_layers(tiny_anatomy) -> None:
    grid = Volume(tiny_anatomy.array, tiny_anatomy.affine, name="scan")
    prob = np.zeros(grid.shape, dtype=np.float32)
    volumes = {
        "lesion_probability": grid.with_array(prob),
        "inpainted": tiny_anatomy.array,  # plain arrays on the grid are accepted too
        "atlas_to_scan": grid.with_array(prob + 0.5),
        "field_atlas_to_scan": np.zeros((3, *grid.shape)),
    }
    tuples = preview_to_layers(volumes, "scan", grid)
    assert [kw["name"] for _, kw, _ in tuples] == [
        "preview: scan lesion probability",
        "preview: scan inpainted",
        "preview: scan atlas→scan",
    ]
    for data, kw, kind in tuples:
        assert kind == "image"
        assert data.shape == tiny_anatomy.shape[::-1]
        assert kw["metadata"]["girnet"]["preview"] is True
    assert tuples[0][1]["colormap"] == "magma"
    assert preview_to_layers({}, "scan", grid) == []
    with pytest.raises(VolumeError):
        preview_to_layers({"inpainted": np.zeros((2, 2, 2))}, "scan", grid)


def test_pair_to_layers_on_both_grids(tiny_anatomy, reorient_array, tmp_path: Path) -> None:
    """Pair results: moving-grid layers as result_to_layers (named after their grid), and the
    fixed-grid outputs with the fixed scan's scale/translate, the field fixed→moving as vectors."""
    from types import SimpleNamespace

    from napari_girnet._napari.layers import pair_to_layers

    result = _fake_result(tiny_anatomy, reorient_array, tmp_path)
    # the follow-up: another grid (LPS file order, 1.5 mm voxels, shifted origin)
    fixed_shape = (8, 9, 7)
    fixed_affine = np.diag([-1.5, -1.5, 1.5, 1.0])
    fixed_affine[:3, 3] = (12.0, 10.0, -4.0)
    fixed = Volume(
        np.arange(np.prod(fixed_shape), dtype=np.float32).reshape(fixed_shape) + 1.0,
        fixed_affine,
        name="post",
    )
    field = np.zeros((3, *fixed_shape), dtype=np.float32)
    field[0] = 3.0  # every fixed point maps 3 mm to the right (RAS +x) in the moving scan
    mask = np.zeros(fixed_shape, dtype=np.uint8)
    mask[2:4, 3:5, 1:3] = 1
    pair = SimpleNamespace(
        registration=result,
        fixed=fixed,
        moved=fixed.with_array(np.full(fixed_shape, 0.25, np.float32), name="moved"),
        inpainted_on_fixed=fixed.with_array(np.full(fixed_shape, 0.5, np.float32)),
        lesion_mask_on_fixed=fixed.with_array(mask, name="mask"),
        field_fixed_to_moving=field,
        field_moving_to_fixed=-np.asarray(result.field_nonlinear),
        jacobian_on_fixed=fixed.with_array(np.ones(fixed_shape, np.float32)),
        tre=None,
    )
    tuples = pair_to_layers(pair, "pre", "post", stride=2, provenance={"widget": "test"})
    by_role = {kw["metadata"]["girnet"]["role"]: (data, kw, kind) for data, kw, kind in tuples}
    single = result_to_layers(result, "pre", stride=2)
    assert len(tuples) == len(single) + 5
    for (_, kw, _), (_, ref, _) in zip(tuples, single, strict=False):
        grid = kw["metadata"]["girnet"]["grid"]
        if kw["metadata"]["girnet"]["role"] == "scan_to_atlas":
            assert kw["name"] == ref["name"] and grid == "working"
        else:
            assert kw["name"] == f"{ref['name']} (on pre)" and grid == "moving"
            np.testing.assert_allclose(kw["scale"], ref["scale"])
            np.testing.assert_allclose(kw["translate"], ref["translate"])
    fixed_ref = volume_to_layer_data(fixed, "post")[1]
    expected = {
        "moved_on_fixed": ("pre moved (on post)", "image"),
        "inpainted_on_fixed": ("pre inpainted (on post)", "image"),
        "lesion_mask_on_fixed": ("pre lesion mask (on post)", "labels"),
        "deformation_on_fixed": ("pre deformation (on post)", "vectors"),
        "jacobian_on_fixed": ("pre Jacobian (on post)", "image"),
    }
    for role, (name, kind) in expected.items():
        _, kw, got_kind = by_role[role]
        assert (kw["name"], got_kind) == (name, kind)
        assert kw["metadata"]["girnet"]["grid"] == "fixed"
        prov = kw["metadata"]["girnet"]["provenance"]
        assert (prov["mode"], prov["moving_layer"], prov["fixed_layer"]) == ("pair", "pre", "post")
        assert prov["widget"] == "test"
        np.testing.assert_allclose(kw["scale"], fixed_ref["scale"], err_msg=role)
        np.testing.assert_allclose(kw["translate"], fixed_ref["translate"], err_msg=role)
    # the lesion mask overlays the fixed scan voxel for voxel (in world)
    mask_layer = _layer(by_role["lesion_mask_on_fixed"])
    fixed_layer = _layer(volume_to_layer_data(fixed, "post"))
    idx = np.argwhere(np.asarray(mask_layer.data) == 1)
    np.testing.assert_allclose(
        np.array([mask_layer.data_to_world(i) for i in idx]),
        np.array([fixed_layer.data_to_world(i) for i in idx]),
    )
    world = np.array([_world_ras(mask_layer, i) for i in idx])
    ijk = np.rint(fixed.world_to_voxel(world)).astype(int)
    assert np.all(mask[ijk[:, 0], ijk[:, 1], ijk[:, 2]] == 1)
    # vectors: start points on the fixed grid, every one 3 mm along +R in world
    vectors = _layer(by_role["deformation_on_fixed"])
    starts = np.asarray(vectors.data)[:, 0]
    tips = starts + np.asarray(vectors.data)[:, 1]
    start_w = np.array([_world_ras(vectors, s) for s in starts])
    tip_w = np.array([_world_ras(vectors, t) for t in tips])
    np.testing.assert_allclose(tip_w - start_w, np.tile([3.0, 0.0, 0.0], (len(starts), 1)))
    start_ijk = fixed.world_to_voxel(start_w)
    np.testing.assert_allclose(start_ijk, np.rint(start_ijk), atol=1e-6)  # on fixed voxels
    assert len(starts) == int(np.prod([len(range(1, n, 2)) for n in fixed_shape]))
