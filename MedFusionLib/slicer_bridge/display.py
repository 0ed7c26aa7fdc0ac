"""How a result is shown: window and colour of the volumes, the slice views, colour legends and
the metrics table."""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from ..colour import colour_table

__all__ = ["CONTRIBUTION_COLOR_NAME", "node_colour_table", "show_result", "add_colour_legend",
           "contribution_color_node", "write_metrics_table"]


#: Name of the colour table used for contribution maps (created once per scene).
CONTRIBUTION_COLOR_NAME = "MedFusionContribution"


def _show_volume(volume_node, lower: float, upper: float, color_node_id: str) -> None:
    volume_node.CreateDefaultDisplayNodes()
    display = volume_node.GetDisplayNode()
    if display is None:
        return
    display.SetAndObserveColorNodeID(color_node_id)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(float(lower), float(upper))


def _display_range(array: np.ndarray) -> tuple[float, float]:
    """A window for a [0, 1] volume: the 0.5-99.5 percentiles of its non-zero voxels."""
    values = array[array > 0]
    if values.size < 16:
        return 0.0, 1.0
    if values.size > 2_000_000:
        values = values[:: values.size // 1_000_000]
    lower, upper = np.percentile(values, [0.5, 99.5])
    if upper - lower < 1e-3:
        return 0.0, max(float(upper), 1e-3)
    return float(lower), float(upper)


def node_colour_table(volume_node, n: int = 256) -> np.ndarray | None:
    """The colour table a volume node is displayed with, as ``(n, 3)`` RGB in [0, 1].

    None when the node has no display node or is shown in greyscale (then the caller picks a
    default, e.g. ``heat`` for PET). Works for table and procedural colour nodes alike: the
    table is sampled through the colour node's ``GetScalarsToColors()`` over its range.
    """
    display = volume_node.GetDisplayNode() if volume_node is not None else None
    color = display.GetColorNode() if display is not None else None
    if color is None or (color.GetID() or "").endswith("Grey") or color.GetName() in ("Grey", "Gray"):
        return None
    lut = color.GetScalarsToColors()
    if lut is None:
        return None
    lo, hi = lut.GetRange()
    values = np.linspace(lo, hi, n)
    table = np.zeros((n, 3))
    for row, v in zip(table, values):
        rgb = [0.0, 0.0, 0.0]
        lut.GetColor(float(v), rgb)  # the two-argument form is wrapped for every subclass
        row[:] = rgb
    return None if np.allclose(table, table[:, :1]) else table


def show_result(outputVolume, fixedVolume, *, contributionVolume=None, colourVolume=None) -> None:
    """Show a fusion result in every slice view; the one place that sets MedFusion's display.

    Background: the colour fusion when there is one, else the fused volume. Foreground: the
    contribution map at 40 % opacity with a colour legend when there is one, else the fixed
    volume at opacity 0, so that the slice views' fader compares the fused and the fixed volume.
    With the Slicer application's layout manager the views are then fitted to the result.
    """
    background = colourVolume if colourVolume is not None else outputVolume
    if contributionVolume is not None:
        add_colour_legend(contributionVolume)
        foreground, opacity = contributionVolume, 0.4
    else:
        foreground, opacity = fixedVolume, 0.0
    app = getattr(slicer, "app", None)  # absent with slicer-core alone
    slicer.util.setSliceViewerLayers(background=background, foreground=foreground,
                                     foregroundOpacity=opacity, fit=app is not None)


def add_colour_legend(volume_node):
    """Show a colour legend for a volume node in the views (Slicer's Colors module logic).

    Returns the ``vtkMRMLColorLegendDisplayNode``, or None where the scene cannot create one
    (a bare headless scene without the Colors module's node classes).
    """
    logic_class = getattr(slicer, "vtkSlicerColorLogic", None)
    if logic_class is None:
        return None
    legend = logic_class.AddDefaultColorLegendDisplayNode(volume_node)
    if legend is not None:
        legend.SetTitleText(volume_node.GetAttribute("MedFusion.Meaning") or volume_node.GetName())
    return legend


def contribution_color_node(scene):
    """The diverging colour table for contribution maps: blue (moving source) to orange (fixed).

    Created once per scene under the name :data:`CONTRIBUTION_COLOR_NAME`; 256 entries, value 0
    (all from the moving source) blue, 0.5 (equal shares) white, 1 (all from the fixed source)
    orange.
    """
    existing = scene.GetFirstNodeByName(CONTRIBUTION_COLOR_NAME)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    color = slicer.vtkMRMLColorTableNode()
    color.SetName(CONTRIBUTION_COLOR_NAME)
    color.SetTypeToUser()
    color.SetNumberOfColors(256)
    color.SetHideFromEditors(False)
    for i, rgb in enumerate(colour_table("contribution", 256)):
        color.SetColor(i, f"{i / 255.0:.3f}", float(rgb[0]), float(rgb[1]), float(rgb[2]), 1.0)
    color.SetAttribute("Category", "MedFusion")
    scene.AddNode(color)
    return color


def write_metrics_table(table_node, metrics: dict, directions: dict | None = None) -> None:
    """Fill a table node with one row per metric: ``Metric`` (text), ``Value``, ``Direction``.

    Parameters
    ----------
    table_node : vtkMRMLTableNode
        Destination; its columns are replaced.
    metrics : dict
        ``{name: value}``; values are converted to float (NaN kept).
    directions : dict, optional
        ``{name: "higher" | "lower"}``: which way is better; missing names get ``""``.
    """
    directions = directions or {}
    was_modifying = table_node.StartModify()
    try:
        table_node.RemoveAllColumns()
        names = vtk.vtkStringArray()
        names.SetName("Metric")
        values = vtk.vtkDoubleArray()
        values.SetName("Value")
        better = vtk.vtkStringArray()
        better.SetName("Direction")
        for key, value in metrics.items():
            names.InsertNextValue(str(key))
            values.InsertNextValue(float(value))
            better.InsertNextValue(str(directions.get(key, "")))
        table_node.AddColumn(names)
        table_node.AddColumn(values)
        table_node.AddColumn(better)
        table_node.SetColumnDescription("Value", "metric value for the fused volume")
        table_node.SetColumnDescription("Direction", "which way is better: higher or lower")
    finally:
        table_node.EndModify(was_modifying)
