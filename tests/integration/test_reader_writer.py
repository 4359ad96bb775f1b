"""Reader, writers and sample data of the napari plugin, through a real napari viewer."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_girnet._napari.reader import looks_like_labels, napari_get_reader, read_nifti_layers
from napari_girnet._napari.writer import write_image, write_labels, write_points
from napari_girnet.data.landmarks import read_landmarks
from napari_girnet.data.nifti import NiftiError, write_displacement
from napari_girnet.data.volume import Volume

PLUGIN = "napari-girnet"


MARKER_VALUE = 100.0  # conftest.TinyAnatomy.marker_value
SHAPE = (10, 12, 8)  # conftest.TinyAnatomy.shape (R, A, S)


def _marker_world(layer) -> np.ndarray:
    """RAS world mm of the marker centre as napari places it (data_to_world of its index)."""
    idx = np.argwhere(np.asarray(layer.data) == MARKER_VALUE).mean(axis=0)
    return np.asarray(layer.data_to_world(idx), dtype=np.float64)[::-1]


# ----------------------------------------------------------------------------- get_reader
@pytest.mark.parametrize("name", ["a.nii", "a.nii.gz", "A.NII.GZ"])
def test_get_reader_claims_nifti(tmp_path: Path, name: str) -> None:
    assert callable(napari_get_reader(str(tmp_path / name)))
    assert callable(napari_get_reader([str(tmp_path / name)]))


def test_get_reader_claims_landmark_csvs_only(tmp_path: Path, landmark_csvs) -> None:
    assert callable(napari_get_reader(str(landmark_csvs.ras)))
    assert callable(napari_get_reader(landmark_csvs.brats))
    other = tmp_path / "table.csv"
    other.write_text("index,axis-0,axis-1,axis-2\n0,1,2,3\n")
    assert napari_get_reader(str(other)) is None
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x01garbage")
    assert napari_get_reader(str(binary)) is None


def test_get_reader_declines_everything_else(tmp_path: Path, nifti_triplet) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "archive.gz").write_bytes(b"\x1f\x8b")
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_get_reader(str(tmp_path / "archive.gz")) is None
    assert napari_get_reader(str(tmp_path / "missing.csv")) is None
    assert napari_get_reader(str(tmp_path)) is None
    two = [str(nifti_triplet["RAS"]), str(nifti_triplet["LAS"])]
    assert napari_get_reader(two) is None
    assert napari_get_reader([]) is None
    assert napari_get_reader(12345) is None  # type: ignore[arg-type]


def test_reader_error_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    reader = napari_get_reader(str(bad))
    assert reader is not None
    with pytest.raises(NiftiError, match=r"broken\.nii\.gz"):
        reader(str(bad))


# ----------------------------------------------------------------------------- geometry
def test_same_anatomy_same_world_position(
    make_napari_viewer_proxy, nifti_triplet, tiny_anatomy
) -> None:
    viewer = make_napari_viewer_proxy()
    positions = {}
    for code, path in nifti_triplet.items():
        (layer,) = viewer.open(str(path), plugin=PLUGIN)
        assert layer.name == f"scan_{code}"
        assert type(layer).__name__ == "Image"
        assert layer.data.shape == SHAPE[::-1]
        assert tuple(layer.axis_labels) == ("S", "A", "R")
        assert [str(u) for u in layer.units] == ["millimeter"] * 3
        meta = layer.metadata["girnet"]
        assert "".join(meta["axcodes"]) == code
        np.testing.assert_allclose(meta["source_affine"], nib.load(path).affine)
        np.testing.assert_allclose(meta["affine"], tiny_anatomy.affine)
        positions[code] = _marker_world(layer)
    for code, world in positions.items():
        np.testing.assert_allclose(world, tiny_anatomy.marker_world, atol=1e-6, err_msg=code)
    # the slider runs along S: the last world axis (R) is displayed horizontally
    assert viewer.dims.ndim == 3


def test_labels_detection(
    make_napari_viewer_proxy, tiny_labels_path: Path, tiny_scan_path: Path
) -> None:
    viewer = make_napari_viewer_proxy()
    (labels,) = viewer.open(str(tiny_labels_path), plugin=PLUGIN)
    (image,) = viewer.open(str(tiny_scan_path), plugin=PLUGIN)
    assert type(labels).__name__ == "Labels"
    assert type(image).__name__ == "Image"
    assert set(np.unique(labels.data)) == {0, 1, 2}
    # both overlay: the label-1 voxels sit on the image's marker
    lab_idx = np.argwhere(np.asarray(labels.data) == 1).mean(axis=0)
    np.testing.assert_allclose(
        labels.data_to_world(lab_idx),
        image.data_to_world(np.argwhere(np.asarray(image.data) == MARKER_VALUE).mean(axis=0)),
    )


def test_looks_like_labels_rules(tiny_anatomy) -> None:
    aff = tiny_anatomy.affine
    rng = np.random.default_rng(0)
    t1_uint8 = rng.integers(0, 256, SHAPE).astype(np.uint8)
    assert not looks_like_labels(Volume(t1_uint8, aff), "t1")
    assert looks_like_labels(Volume(t1_uint8, aff), "brain_seg")
    assert looks_like_labels(Volume((t1_uint8 > 128).astype(np.uint8), aff), "t1")
    assert looks_like_labels(Volume(rng.integers(0, 117, SHAPE).astype(np.int16), aff), "x")
    assert not looks_like_labels(Volume(rng.integers(0, 4000, SHAPE).astype(np.int16), aff), "x")
    assert looks_like_labels(Volume((t1_uint8 > 100).astype(np.float32), aff), "x")
    assert not looks_like_labels(Volume(tiny_anatomy.array, aff), "x")
    assert looks_like_labels(Volume(t1_uint8, aff, meta={"intent_code": 1002}), "t1")


# ----------------------------------------------------------------------------- writers
@pytest.mark.parametrize("code", ["LAS", "LPS"])
def test_image_round_trip_through_viewer(
    make_napari_viewer_proxy, nifti_triplet, tmp_path: Path, code: str
) -> None:
    viewer = make_napari_viewer_proxy()
    source = nifti_triplet[code]
    (layer,) = viewer.open(str(source), plugin=PLUGIN)
    out = tmp_path / "out" / f"saved_{code}.nii.gz"
    out.parent.mkdir()
    written = layer.save(str(out), plugin=PLUGIN)
    assert [Path(p) for p in written] == [out]
    a, b = nib.load(source), nib.load(out)
    np.testing.assert_array_equal(b.affine, a.affine)
    np.testing.assert_array_equal(np.asarray(b.dataobj), np.asarray(a.dataobj))
    assert b.get_data_dtype() == a.get_data_dtype()
    (again,) = viewer.open(str(out), plugin=PLUGIN)
    np.testing.assert_array_equal(again.data, layer.data)
    np.testing.assert_allclose(again.scale, layer.scale)
    np.testing.assert_allclose(again.translate, layer.translate)


def test_labels_round_trip_keeps_dtype_and_orientation(tiny_labels_path: Path, tmp_path: Path):
    ((data, meta, kind),) = read_nifti_layers(str(tiny_labels_path))
    assert kind == "labels"
    out = Path(write_labels(str(tmp_path / "mask"), data, meta)[0])
    assert out.name == "mask.nii.gz"
    a, b = nib.load(tiny_labels_path), nib.load(out)
    assert b.get_data_dtype() == np.uint8
    assert nib.aff2axcodes(b.affine) == ("L", "A", "S")
    np.testing.assert_array_equal(b.affine, a.affine)
    np.testing.assert_array_equal(np.asarray(b.dataobj), np.asarray(a.dataobj))


def test_image_writer_without_girnet_metadata(tmp_path: Path, tiny_anatomy) -> None:
    """A layer made elsewhere: (S, A, R) data + scale/translate -> RAS file."""
    data = tiny_anatomy.array.transpose(2, 1, 0)
    meta = {
        "name": "plain",
        "scale": (3.0, 1.5, 2.0),
        "translate": (4.5, -21.0, -9.0),
        "metadata": {},
    }
    out = Path(write_image(str(tmp_path / "plain.nii"), data, meta)[0])
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, tiny_anatomy.affine)
    np.testing.assert_array_equal(np.asarray(img.dataobj), tiny_anatomy.array)


# ----------------------------------------------------------------------------- landmarks
def test_landmark_csvs_overlay_images(
    make_napari_viewer_proxy, landmark_csvs, nifti_triplet, tiny_anatomy
) -> None:
    viewer = make_napari_viewer_proxy()
    (image,) = viewer.open(str(nifti_triplet["LPS"]), plugin=PLUGIN)
    (ras,) = viewer.open(str(landmark_csvs.ras), plugin=PLUGIN)
    (brats,) = viewer.open(str(landmark_csvs.brats), plugin=PLUGIN)
    for layer in (ras, brats):
        assert type(layer).__name__ == "Points"
        assert list(layer.features["id"]) == list(landmark_csvs.ids)
        world = np.array([layer.data_to_world(p) for p in layer.data])[:, ::-1]
        np.testing.assert_allclose(world, landmark_csvs.world_ras, atol=1e-9)
    # landmark "1" sits on the image's marker
    np.testing.assert_allclose(
        ras.data_to_world(ras.data[0]), _marker_world(image)[::-1], atol=1e-6
    )
    assert brats.metadata["girnet"]["format"] == "brats"


def test_points_csv_round_trip(make_napari_viewer_proxy, landmark_csvs, tmp_path: Path) -> None:
    viewer = make_napari_viewer_proxy()
    (layer,) = viewer.open(str(landmark_csvs.brats), plugin=PLUGIN)
    out = tmp_path / "saved.csv"
    assert layer.save(str(out), plugin=PLUGIN) == [str(out)]
    assert out.read_text().splitlines()[0] == "id,x,y,z"
    back = read_landmarks(out)
    assert back.ids == landmark_csvs.ids
    np.testing.assert_allclose(back.world, landmark_csvs.world_ras, atol=1e-9)
    (again,) = viewer.open(str(out), plugin=PLUGIN)
    np.testing.assert_allclose(again.data, layer.data, atol=1e-9)


def test_points_writer_on_scaled_layer(tmp_path: Path, landmark_csvs) -> None:
    """Points stored in voxel coordinates of an image (scale/translate) are written in mm."""
    world_sar = landmark_csvs.world_ras[:, ::-1]
    scale, translate = np.array([3.0, 1.5, 2.0]), np.array([4.5, -21.0, -9.0])
    data = (world_sar - translate) / scale
    meta = {"name": "vox", "scale": scale, "translate": translate}
    meta["features"] = {"id": ["a", "b", "c"]}
    out = write_points(str(tmp_path / "vox"), data, meta)[0]
    back = read_landmarks(out)
    assert back.ids == ("a", "b", "c")
    np.testing.assert_allclose(back.world, landmark_csvs.world_ras, atol=1e-9)


# ----------------------------------------------------------------------------- fields
def test_displacement_field_opens_as_vectors(
    make_napari_viewer_proxy, tiny_anatomy, reorient_array, tmp_path: Path
) -> None:
    las_array, las_affine = reorient_array(tiny_anatomy.array, tiny_anatomy.affine, "LAS")
    grid = Volume(las_array, las_affine, name="grid").canonical()
    d_mm = np.array([4.0, -3.0, 6.0])
    disp_vox = np.linalg.inv(grid.affine[:3, :3]) @ d_mm
    field = np.broadcast_to(disp_vox[:, None, None, None], (3, *grid.shape)).copy()
    path = write_displacement(tmp_path / "field.nii.gz", field, grid, convention="itk")
    viewer = make_napari_viewer_proxy()
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    assert type(layer).__name__ == "Vectors"
    assert len(layer.data) > 0
    start, proj = layer.data[0]
    moved = np.subtract(layer.data_to_world(start + proj), layer.data_to_world(start))[::-1]
    np.testing.assert_allclose(moved, d_mm, atol=1e-4)
    np.testing.assert_allclose(layer.features["magnitude_mm"], np.linalg.norm(d_mm), rtol=1e-5)


# ----------------------------------------------------------------------------- samples
def test_sample_data(make_napari_viewer_proxy) -> None:
    pytest.importorskip("napari_girnet.datasets", reason="datasets package not available")
    viewer = make_napari_viewer_proxy()
    layers = viewer.open_sample(PLUGIN, "glioma")
    assert [type(ly).__name__ for ly in layers] == ["Image", "Labels"]
    scan, truth = layers
    assert "CC BY" in scan.metadata["girnet"]["licence"]
    assert truth.metadata["girnet"]["licence"] == scan.metadata["girnet"]["licence"]
    np.testing.assert_allclose(scan.scale, (2.0, 2.0, 2.0))
    np.testing.assert_allclose(truth.translate, scan.translate)
    assert np.asarray(truth.data).any()
    (atlas,) = viewer.open_sample(PLUGIN, "mni152_2mm")
    assert atlas.data.shape == scan.data.shape
    assert "McGill" in atlas.metadata["girnet"]["licence"]


def test_brats_reg_landmark_lands_on_its_voxel(make_napari_viewer_proxy, tmp_path: Path) -> None:
    """A BraTS-Reg landmark (LPS world mm) read as Points sits on voxel (X, Y + 239, Z) of a
    240 x 240 x 155 scan with the BraTS-Reg header (LPS, affine diag(-1, -1, 1), translation
    (0, 239, 0)), as napari shows them."""
    shape = (240, 240, 155)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = (0.0, 239.0, 0.0)
    # a grey ramp along S (100..199, so it opens as an Image), compressing to a few KiB
    array = np.broadcast_to((100 + np.arange(155) % 100).astype(np.uint8), shape).copy()
    landmarks = {"1": (122.0, -141.0, 55.0), "2": (167.0, -140.0, 69.0), "7": (3.0, -230.0, 150.0)}
    for n, (x, y, z) in enumerate(landmarks.values(), start=1):
        array[int(x), int(y) + 239, int(z)] = 10 * n + 30  # a distinct grey level per landmark
    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units(xyz="mm")
    scan_path = tmp_path / "BraTSReg_999_01_0001_t1.nii.gz"
    nib.save(img, scan_path)
    csv_path = tmp_path / "BraTSReg_999_01_0001_landmarks.csv"
    csv_path.write_text(
        "Landmark,X,Y,Z\n" + "".join(f"{k},{x},{y},{z}\n" for k, (x, y, z) in landmarks.items())
    )

    viewer = make_napari_viewer_proxy()
    (scan,) = viewer.open(str(scan_path), plugin=PLUGIN)
    (points,) = viewer.open(str(csv_path), plugin=PLUGIN)
    assert type(scan).__name__ == "Image" and type(points).__name__ == "Points"
    assert scan.data.shape == (155, 240, 240)  # (S, A, R): slider along S
    assert list(points.features["id"]) == list(landmarks)
    data = np.asarray(scan.data)
    for n, (point, (x, y, z)) in enumerate(zip(points.data, landmarks.values(), strict=True), 1):
        index = np.asarray(scan.world_to_data(points.data_to_world(point)), dtype=np.float64)
        np.testing.assert_allclose(index, (z, -y, 239 - x), atol=1e-6)  # displayed RAS order
        assert data[tuple(np.rint(index).astype(int))] == 10 * n + 30
    # the same point through the file's own affine: voxel (X, Y + 239, Z)
    world_ras = np.asarray(points.data_to_world(points.data[0]))[::-1]
    ijk = np.linalg.inv(affine) @ np.append(world_ras, 1.0)
    np.testing.assert_allclose(ijk[:3], (122.0, 98.0, 55.0), atol=1e-9)
