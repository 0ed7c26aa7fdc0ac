"""Run MedFusion on 3D Slicer MRML nodes: the path shared by the Slicer module, scripts and tests.

This package is the only part of MedFusionLib that talks to Slicer (it imports ``slicer`` and
``vtk``; ``import MedFusionLib`` does not import it). It works in the Slicer application and
headless with the ``slicer-core`` wheel (a scene assigned to ``slicer.mrmlScene``, see
:func:`headless_scene`). Its modules, by concern:

- :mod:`.nodes`: volume nodes <-> SimpleITK images (voxels, geometry, DICOM modality);
- :mod:`.placement`: registration results in transform nodes, where the moving volume sits;
- :mod:`.display`: windows, colour tables and legends, the slice views, the metrics table;
- :mod:`.fuse`: :func:`fuse_nodes`, registration and fusion of two volume nodes, in process;
- :mod:`.task`: :func:`fuse_nodes_async`, the same in a child process while Slicer stays usable;
- :mod:`.scene`: an MRML scene without the application.

Coordinate conventions
----------------------
Slicer's world coordinates are RAS (right, anterior, superior); ITK/SimpleITK, DICOM, NIfTI and
NRRD files are LPS. A volume node stores its geometry as one 4x4 IJK->RAS matrix; a SimpleITK image
stores origin, spacing and a direction matrix in LPS. The conversion flips the first two physical
axes: ``IJK->LPS = diag(-1, -1, 1, 1) @ IJK->RAS``. Voxel arrays are indexed ``[k, j, i]`` (z, y, x)
on both sides, so no axis is reordered.

ITK transforms map points of the *fixed* image to the *moving* image (the direction resampling
needs). Slicer transform nodes store the transform *to parent*, which moves the node's content
in the world: a registration result therefore goes into the node as its *from parent* transform
(the ITK transform, in RAS, composed with the moving volume's existing parents), and the moving
volume is shown through the node, aligned on the fixed volume (see :func:`fuse_nodes`).
"""

from __future__ import annotations

from .display import (CONTRIBUTION_COLOR_NAME, add_colour_legend, contribution_color_node, node_colour_table, show_result,
                      write_metrics_table)
from .fuse import CLINICAL_COLOUR_TABLES, DEFAULT_METRIC_KEYS, NodeFusionResult, functional_role, \
    fuse_nodes
from .nodes import dicom_modality, ijk_to_ras_matrix, image_from_volume, update_volume_from_image
from .placement import matrix_from_transform, set_transform_node
from .scene import headless_scene
from .task import FusionTask, discard_standby, fuse_nodes_async, prewarm

__all__ = [
    "NodeFusionResult",
    "CONTRIBUTION_COLOR_NAME",
    "DEFAULT_METRIC_KEYS",
    "ijk_to_ras_matrix",
    "dicom_modality",
    "image_from_volume",
    "update_volume_from_image",
    "matrix_from_transform",
    "set_transform_node",
    "write_metrics_table",
    "contribution_color_node",
    "node_colour_table",
    "add_colour_legend",
    "show_result",
    "fuse_nodes",
    "fuse_nodes_async",
    "prewarm",
    "discard_standby",
    "FusionTask",
    "functional_role",
    "CLINICAL_COLOUR_TABLES",
    "headless_scene",
]
