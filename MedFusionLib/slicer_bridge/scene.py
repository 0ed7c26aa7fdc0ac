"""An MRML scene without the Slicer application (``slicer-core``), for scripts and tests."""

from __future__ import annotations

import slicer

__all__ = ["headless_scene"]


def headless_scene(views=("Red",)):
    """Create an MRML scene for use without the Slicer application (e.g. with ``slicer-core``).

    Sets ``slicer.mrmlScene`` and ``slicer.appLogic`` so that ``slicer.util`` helpers and
    :func:`fuse_nodes` work, loads the default colour tables, and creates one slice view (slice
    node, composite node and slice logic) per name in ``views``. Inside the Slicer application use
    the application's own scene instead.

    Returns
    -------
    scene : vtkMRMLScene
    slice_logics : dict
        ``{view name: vtkMRMLSliceLogic}``; ``logic.GetImageDataConnection()`` gives the blended
        RGBA slice image that the view would display.
    """
    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()
    crosshair.SetCrosshairName("default")
    scene.AddNode(crosshair)
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    color_logic = app_logic.GetColorLogic()
    color_logic.SetMRMLScene(scene)
    color_logic.AddDefaultColorNodes()
    # the Colors module registers this class in the application; a bare scene needs it for legends
    scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
    slicer.mrmlScene = scene
    slicer.appLogic = app_logic
    slice_logics = {}
    for name in views:
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        logic.AddSliceNode(name)
        slice_logics[name] = logic
    return scene, slice_logics
