"""``fuse_nodes`` end to end on a real MRML scene (slicer-core): geometry, outputs, inputs intact.

Registration is ``none`` here (pairs are built aligned, or with a known grid relationship) so the
tests stay fast; the recovery of a known rigid misalignment by registration is asserted by the
module's own self-test, which ``test_slicer_module.py`` runs.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from MedFusionLib import slicer_bridge as sb
from MedFusionLib.errors import CancelledError, InvalidInputError
from slicer_shim import mrml_scene, node_snapshot, oblique_ijk_to_ras  # noqa: F401  (fixture)


def _phantom(shape=(20, 24, 22), seed=0):
    """A blob volume with structure in every slice, float32."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    body = (k ** 2 + j ** 2 + i ** 2) < 0.8
    vol = np.where(body, 200.0 + 80.0 * np.sin(5 * i) * np.cos(4 * j), 0.0)
    vol += rng.normal(0, 3, shape)
    return vol.astype(np.float32)


def _matrix(node):
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


@pytest.fixture
def aligned_pair(mrml_scene):
    """Fixed (oblique) and moving volumes of the same physical content, the moving one stored
    with its i axis reversed, so any RAS/LPS or axis mistake misplaces it."""
    fixed_array = _phantom()
    m = oblique_ijk_to_ras()
    fixed = slicer.util.addVolumeFromArray(fixed_array, ijkToRAS=m, name="fixed MR")
    flipped = m.copy()
    flipped[:3, 0] = -m[:3, 0]
    flipped[:3, 3] = m[:3, 3] + m[:3, 0] * (fixed_array.shape[2] - 1)
    moving_array = (fixed_array[:, :, ::-1] * 0.5 + 40.0).astype(np.float32)  # other contrast
    moving = slicer.util.addVolumeFromArray(moving_array, ijkToRAS=flipped, name="moving")
    return fixed, moving


def test_output_on_fixed_geometry_and_moving_content_in_place(mrml_scene, aligned_pair):
    fixed, moving = aligned_pair
    out = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused")
    res = sb.fuse_nodes(fixed, moving, out, method="average", registration="none",
                        fixed_modality="MR", moving_modality="MR")
    np.testing.assert_array_equal(_matrix(out), _matrix(fixed))
    assert out.GetImageData().GetDimensions() == fixed.GetImageData().GetDimensions()
    fused = slicer.util.arrayFromVolume(out)
    assert fused.dtype == np.float32
    assert 0.0 <= fused.min() and fused.max() <= 1.0
    # the moving volume's content lands on the same voxels as the fixed volume's: after
    # normalisation (robust percentiles, linear) the two sources agree voxel for voxel
    f01, m01 = res.fusion.fixed01, res.fusion.moving01
    body = f01 > 0.2
    assert np.corrcoef(f01[body], m01[body])[0, 1] > 0.999
    np.testing.assert_allclose(fused, 0.5 * (f01 + m01), atol=1e-6)


def test_inputs_unchanged_byte_for_byte(mrml_scene, aligned_pair):
    """Voxels, geometry, names and display of both inputs are untouched; the moving volume's
    parent transform stays attached too unless a transform node receives the registration, in
    which case the moving volume is placed under that node (test_slicer_transform.py)."""
    fixed, moving = aligned_pair
    parent = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    moving.SetAndObserveTransformNodeID(parent.GetID())  # identity, but must stay attached
    before = [node_snapshot(fixed), node_snapshot(moving)]
    out = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused")
    table = mrml_scene.AddNewNodeByClass("vtkMRMLTableNode", "metrics")
    contribution = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "contribution")
    sb.fuse_nodes(fixed, moving, out, method="maximum", registration="none",
                  metricsTable=table, contributionVolume=contribution)
    assert [node_snapshot(fixed), node_snapshot(moving)] == before
    tx = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "tx")
    sb.fuse_nodes(fixed, moving, out, method="maximum", registration="none", transformNode=tx)
    after = node_snapshot(moving)
    assert after.pop("parent") == tx.GetID()
    assert tx.GetTransformNodeID() is None
    expected = before[1]
    expected.pop("parent")
    assert [node_snapshot(fixed), after] == [before[0], expected]


def test_display_slice_views_and_provenance(mrml_scene, aligned_pair):
    fixed, moving = aligned_pair
    out = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused")
    sb.fuse_nodes(fixed, moving, out, method="maximum", registration="none")
    display = out.GetDisplayNode()
    assert display is not None and not display.GetAutoWindowLevel()
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeGrey"
    assert 0.0 <= display.GetWindowLevelMin() < display.GetWindowLevelMax() <= 1.0
    composite = slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode")[0]
    assert composite.GetBackgroundVolumeID() == out.GetID()
    assert composite.GetForegroundVolumeID() == fixed.GetID()
    assert composite.GetForegroundOpacity() == 0.0
    assert out.GetAttribute("MedFusion.Method") == "maximum"
    assert out.GetAttribute("MedFusion.Registration") == "none"
    assert out.GetAttribute("MedFusion.FixedVolume") == fixed.GetID()


def test_contribution_map_and_metrics_table(mrml_scene, aligned_pair):
    fixed, moving = aligned_pair
    out = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused")
    contribution = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "contribution")
    table = mrml_scene.AddNewNodeByClass("vtkMRMLTableNode", "metrics")
    res = sb.fuse_nodes(fixed, moving, out, method="maximum", registration="none",
                        contributionVolume=contribution, metricsTable=table)
    w = slicer.util.arrayFromVolume(contribution)
    np.testing.assert_array_equal(_matrix(contribution), _matrix(fixed))
    assert w.min() >= 0.0 and w.max() <= 1.0
    f01, m01 = res.fusion.fixed01, res.fusion.moving01
    np.testing.assert_allclose(slicer.util.arrayFromVolume(out), w * f01 + (1 - w) * m01, atol=1e-5)
    assert contribution.GetDisplayNode().GetColorNode().GetName() == sb.CONTRIBUTION_COLOR_NAME
    # metrics table: the default keys that fit 24 x 22 slices (VIF needs 48), in order
    keys = [k for k in sb.DEFAULT_METRIC_KEYS if k != "VIF"]
    t = table.GetTable()
    assert [t.GetValue(r, 0).ToString() for r in range(table.GetNumberOfRows())] == keys
    assert {t.GetValue(r, 2).ToString() for r in range(len(keys))} <= {"higher", "lower", "target"}
    values = slicer.util.arrayFromTableColumn(table, "Value")
    np.testing.assert_allclose(values, [res.metrics[k] for k in keys])
    assert np.all(np.isfinite(values))
    entropy = values[keys.index("EN")]
    assert 0.0 < entropy <= 8.0  # bits, 256 grey levels


def test_transform_node_identity_without_registration(mrml_scene, aligned_pair):
    fixed, moving = aligned_pair
    out = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused")
    tx = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "tx")
    tx.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(np.diag([2.0, 2.0, 2.0, 1.0])))
    sb.fuse_nodes(fixed, moving, out, method="average", registration="none", transformNode=tx)
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(tx), np.eye(4), atol=1e-12)


def test_single_slice_pair_is_fused_in_2d(mrml_scene):
    m = np.diag([-0.8, -0.8, 1.0, 1.0])
    a = slicer.util.addVolumeFromArray(_phantom((1, 40, 36))[:, :, :], ijkToRAS=m, name="a")
    b = slicer.util.addVolumeFromArray(_phantom((1, 40, 36), seed=3)[:, :, ::-1].copy(), ijkToRAS=m, name="b")
    out = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused")
    res = sb.fuse_nodes(a, b, out, method="maximum", registration="none")
    assert res.fusion.fused.GetDimension() == 2
    assert slicer.util.arrayFromVolume(out).shape == (1, 40, 36)
    np.testing.assert_array_equal(_matrix(out), m)


def test_cancel_writes_nothing(mrml_scene, aligned_pair):
    fixed, moving = aligned_pair
    out = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused")
    table = mrml_scene.AddNewNodeByClass("vtkMRMLTableNode", "metrics")
    tx = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "tx")
    calls = []

    def stop_at_metrics(fraction, message):
        calls.append(message)
        return "metrics" not in message

    with pytest.raises(CancelledError):
        sb.fuse_nodes(fixed, moving, out, method="maximum", registration="none",
                      metricsTable=table, transformNode=tx, progress=stop_at_metrics)
    assert any("fusing" in c for c in calls)  # the fusion itself had run
    assert out.GetImageData() is None
    assert table.GetNumberOfColumns() == 0
    np.testing.assert_array_equal(slicer.util.arrayFromTransformMatrix(tx), np.eye(4))


def test_bad_nodes_are_refused_with_names(mrml_scene, aligned_pair):
    fixed, moving = aligned_pair
    out = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused")
    with pytest.raises(InvalidInputError, match="output volume and the fixed volume|fixed volume and the output"):
        sb.fuse_nodes(fixed, moving, fixed, method="average", registration="none")
    with pytest.raises(InvalidInputError, match="'dwt' gives no contribution map.*maximum"):
        sb.fuse_nodes(fixed, moving, out, method="dwt", registration="none",
                      contributionVolume=mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode"))
    label = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    with pytest.raises(InvalidInputError, match="'labels' is a labelmap"):
        sb.fuse_nodes(fixed, moving, label, method="average", registration="none")
    table = mrml_scene.AddNewNodeByClass("vtkMRMLTableNode", "not a transform")
    with pytest.raises(InvalidInputError, match="output transform 'not a transform' is not a "
                                                 "transform; choose a transform") as error:
        sb.fuse_nodes(fixed, moving, out, method="average", registration="none", transformNode=table)
    assert "vtkMRML" not in str(error.value)  # messages in the user's words, not VTK class names
    assert out.GetImageData() is None


def test_no_output_volume_creates_one_named_after_the_moving_volume(mrml_scene, aligned_pair):
    fixed, moving = aligned_pair
    before = mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    result = sb.fuse_nodes(fixed, moving, None, method="average", registration="none")
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == before + 1
    assert result.outputVolume.GetName() == f"{moving.GetName()} fused"
    assert result.outputVolume.GetImageData().GetDimensions() == fixed.GetImageData().GetDimensions()


def test_fixed_under_linear_transform_output_in_world(mrml_scene, aligned_pair):
    """A fixed volume under a (linear) parent transform: the output is placed where the fixed
    volume is displayed, with no parent transform of its own."""
    fixed, moving = aligned_pair
    shift = np.eye(4)
    shift[:3, 3] = (5.0, 0.0, -2.0)
    parent = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    parent.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    fixed.SetAndObserveTransformNodeID(parent.GetID())
    out = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused")
    sb.fuse_nodes(fixed, moving, out, method="maximum", registration="none")
    np.testing.assert_allclose(_matrix(out), shift @ _matrix(fixed), atol=1e-9)
    assert out.GetTransformNodeID() is None


def test_sitk_image_written_to_node_keeps_lps_geometry(mrml_scene):
    image = sitk.Image([5, 6, 7], sitk.sitkFloat32)
    image.SetOrigin((10.0, 20.0, -30.0))
    image.SetSpacing((0.5, 0.7, 1.1))
    node = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    sb.update_volume_from_image(node, image)
    np.testing.assert_allclose(node.GetOrigin(), (-10.0, -20.0, -30.0))
    np.testing.assert_allclose(node.GetSpacing(), (0.5, 0.7, 1.1))


class _FakeDicomDatabase:
    """Stands in for ``slicer.dicomDatabase`` (ctkDICOMDatabase): instance UID -> file -> tags."""

    def __init__(self, tags_by_uid):
        self.tags_by_uid = tags_by_uid

    def fileForInstance(self, uid):
        return f"/dicom/{uid}.dcm" if uid in self.tags_by_uid else ""

    def fileValue(self, filename, tag):
        uid = filename.rsplit("/", 1)[1][:-4]
        return self.tags_by_uid[uid].get(tag, "")


def test_dicom_modality_reaches_the_normalisation(mrml_scene, aligned_pair, monkeypatch):
    """A PET loaded from DICOM is normalised as PET (it cannot be told from MR by its values)."""
    fixed, moving = aligned_pair
    monkeypatch.setattr(slicer, "dicomDatabase", _FakeDicomDatabase({"1.2.3": {"0008,0060": "PT "}}),
                        raising=False)
    moving.SetAttribute("DICOM.instanceUIDs", "1.2.3 1.2.4")
    assert sb.dicom_modality(moving) == "PT" and sb.dicom_modality(fixed) is None
    out = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused")
    res = sb.fuse_nodes(fixed, moving, out, method="maximum", registration="none")
    assert (res.fusion.moving_norm.modality, res.fusion.moving_norm.modality_source) == ("PET", "dicom")
    assert res.fusion.fixed_norm.modality_source == "guess"


def test_headless_slice_view_shows_the_fused_volume():
    """headless_scene's slice views blend layers as Slicer displays them (the screenshot path)."""
    from vtk.util import numpy_support

    scene, logics = sb.headless_scene(views=("Red", "Green"))
    try:
        a = slicer.util.addVolumeFromArray(_phantom(), ijkToRAS=np.diag([1.0, 1.0, 2.0, 1.0]), name="a")
        b = slicer.util.addVolumeFromArray(_phantom(seed=2), ijkToRAS=np.diag([1.0, 1.0, 2.0, 1.0]), name="b")
        out = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused")
        sb.fuse_nodes(a, b, out, method="maximum", registration="none")
        logic = logics["Red"]
        assert logic.GetSliceCompositeNode().GetBackgroundVolumeID() == out.GetID()
        logic.GetSliceNode().SetDimensions(64, 64, 1)
        logic.FitSliceToAll()
        producer = logic.GetImageDataConnection().GetProducer()
        producer.Update()
        image = producer.GetOutputDataObject(0)
        assert image.GetDimensions()[:2] == (64, 64)
        rgba = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(64, 64, -1)
        grey = rgba[..., 0].astype(float)
        assert np.ptp(grey) > 100  # the fused phantom is visible with its window/level
        assert np.array_equal(rgba[..., 0], rgba[..., 1])  # grey colour table, no foreground tint
    finally:
        scene.Clear(1)


def test_metrics_step_reports_progress_and_can_be_cancelled(mrml_scene, aligned_pair):
    """#14 defect 3: the metrics are scored slice by slice with progress, and a cancel there
    stops the run before any node is written (it used to run to its end unseen)."""
    fixed, moving = aligned_pair
    out = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused")
    table = mrml_scene.AddNewNodeByClass("vtkMRMLTableNode", "metrics")
    messages = []

    def cancel_in_metrics(fraction, message):
        messages.append(message)
        return not message.startswith("metrics: slice 2/")

    with pytest.raises(CancelledError, match="metrics: slice 2/"):
        sb.fuse_nodes(fixed, moving, out, method="maximum", registration="none",
                      metricsTable=table, progress=cancel_in_metrics)
    assert any(m.startswith("metrics: slice 1/") for m in messages)
    assert out.GetImageData() is None and table.GetNumberOfColumns() == 0
