"""Fusing two volume nodes in the background: Slicer stays usable while the engine works.

:func:`fuse_nodes_async` checks the nodes and copies the inputs out of the scene (the only work
on the caller's thread before it returns), then the engine runs in a child process
(:mod:`MedFusionLib.background`). The returned :class:`FusionTask` is polled on the main thread
-- by a Qt timer in the application, or by :meth:`FusionTask.wait` in a script -- and, when the
child has finished, writes the result nodes exactly as :func:`~MedFusionLib.slicer_bridge.fuse_nodes`
does. Until then the scene is not changed; closing the scene, or deleting a node the run reads or
writes, cancels it.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time

import slicer
import vtk

from .. import background
from ..background import BackgroundFusion, Launcher, discard_standby, start
from ..errors import CancelledError, MedFusionError
from .fuse import FusionRequest, NodeFusionResult, prepare_fusion, write_result

__all__ = ["FusionTask", "fuse_nodes_async", "prewarm", "discard_standby", "slicer_launcher",
           "POLL_INTERVAL_MS"]

logger = logging.getLogger("MedFusionLib")

#: How often the application's timer polls a running task (ms).
POLL_INTERVAL_MS = 100

#: Where the child's progress ends; the rest of the bar is writing the nodes.
_CHILD_SHARE = 0.98


def slicer_launcher() -> Launcher:
    """Slicer's own Python (``PythonSlicer``, on the PATH inside Slicer, as
    ``slicer.util.executePythonModule`` finds it) in Slicer's environment; elsewhere (slicer-core,
    tests) this interpreter."""
    python = shutil.which("PythonSlicer")
    return Launcher(python=(python,) if python else (sys.executable,))


def prewarm(method: str | None = None, launcher: Launcher | None = None) -> None:
    """Have a fusion process wait in standby with the engine (and PyTorch, when ``method``
    needs it) imported, so that the next :func:`fuse_nodes_async` does not wait for those
    imports. Returns at once; the panel calls it when it is opened and after each run
    (:func:`MedFusionLib.background.prewarm`; :func:`discard_standby` ends it)."""
    background.prewarm(launcher or slicer_launcher(), method)


class FusionTask:
    """A fusion of two volume nodes running in the background (made by :func:`fuse_nodes_async`).

    Attributes
    ----------
    state : {"running", "done", "failed", "cancelled"}
    fraction : float
        One progress bar from 0 to 1 across reading, registration, fusion, metrics and writing
        the nodes; it never goes back.
    message : str
        What is being done now.
    result : NodeFusionResult or None
        When ``done``.
    error : MedFusionError or None
        When ``failed`` (the one-line error) or ``cancelled`` (why).
    """

    def __init__(self, request: FusionRequest, run: BackgroundFusion, *, progress=None,
                 done=None, timer=None):
        self.request = request
        self.run = run
        self.state = "running"
        self.fraction = 0.0
        self.message = "starting"
        self.result: NodeFusionResult | None = None
        self.error: MedFusionError | None = None
        self._progress = progress
        self._done = [done] if done is not None else []
        self._t0 = time.perf_counter()
        self._scene = request.fixedVolume.GetScene() or slicer.mrmlScene
        self._node_ids = {n.GetID() for n in request.nodes() if n.GetID()}
        self._observers = [
            self._scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent, self._on_scene_close),
            self._scene.AddObserver(slicer.vtkMRMLScene.NodeAboutToBeRemovedEvent,
                                    self._on_node_removed),
        ]
        self._timer = None
        if timer is not None:
            self._timer = timer()
            self._timer.setInterval(POLL_INTERVAL_MS)
            self._timer.connect("timeout()", self.poll)
            self._timer.start()

    # -- state ------------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.state != "running"

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._t0

    def time_left(self) -> float | None:
        """Estimated seconds to the end, from the progress so far (None until it means something)."""
        if self.finished or not 0.03 <= self.fraction < _CHILD_SHARE or self.seconds < 1.0:
            return None
        return self.seconds * (1.0 - self.fraction) / self.fraction

    def status(self) -> str:
        """The stage and, once it can be estimated, the time left: for a status line."""
        left = self.time_left()
        if left is None:
            return self.message
        return f"{self.message} (about {_duration(left)} left)"

    def add_done_callback(self, callback) -> None:
        """Call ``callback(task)`` when the task ends (at once if it already has)."""
        if self.finished:
            callback(self)
        else:
            self._done.append(callback)

    # -- what the main thread does ----------------------------------------------------------------

    def poll(self) -> bool:
        """Take in the child's progress; write the nodes once it has finished. Returns True when
        the task has ended. Cheap while the child runs (no I/O)."""
        if self.finished:
            return True
        for event in self.run.poll():
            if event[0] == "progress" and event[1] is not None:
                self._advance(_CHILD_SHARE * float(event[1]), event[2])
            elif event[0] == "progress":
                self._advance(None, event[2])
        if self.run.state == "done":
            fusion, metrics, directions = self.run.result
            try:
                self.result = write_result(self.request, fusion, metrics, directions,
                                           progress=self._write_progress)
                self.state = "done"
            except MedFusionError as exc:
                self._end("failed", exc)
                return True
            self._end("done", None)
        elif self.run.state == "failed":
            self._end("failed", self.run.error)
        return self.finished

    def cancel(self, reason: str = "by the user") -> None:
        """Stop now (the child is ended within a second); the scene stays as it was."""
        if self.finished:
            return
        self.run.cancel()
        self.message = f"Cancelled {reason}; no volume was changed."
        self._end("cancelled", CancelledError(self.message))

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> NodeFusionResult:
        """Poll until the task ends (for scripts); return the result or raise its error.

        Raises
        ------
        MedFusionError
            The run failed; :class:`~MedFusionLib.errors.CancelledError` when cancelled.
        TimeoutError
            Still running after ``timeout`` seconds (the task goes on).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the fusion is still running after {timeout} s")
            time.sleep(interval)
        if self.error is not None:
            raise self.error
        return self.result

    # -- internals --------------------------------------------------------------------------------

    def _advance(self, fraction, message: str) -> None:
        if fraction is not None:
            self.fraction = max(self.fraction, min(float(fraction), 1.0))
        self.message = message
        if self._progress is not None:
            self._progress(self.fraction, self.status())

    def _write_progress(self, fraction, message):
        self._advance(_CHILD_SHARE if fraction is None else fraction, message)

    def _end(self, state: str, error) -> None:
        self.state, self.error = state, error
        if state == "failed":
            self.message = f"Fusion failed: {error}"
        if self._timer is not None:
            self._timer.stop()
        for tag in self._observers:
            self._scene.RemoveObserver(tag)
        self._observers = []
        for callback in self._done:
            try:
                callback(self)
            except Exception:  # a broken callback must not leave the task half-ended
                logger.exception("a fusion task's done callback failed")

    def _on_scene_close(self, caller, event) -> None:
        self.cancel("because the scene was closed")

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _on_node_removed(self, caller, event, node) -> None:
        if node is not None and node.GetID() in self._node_ids:
            self.cancel(f"because '{node.GetName()}', which this fusion uses, was deleted")


def _duration(seconds: float) -> str:
    seconds = max(1, int(round(seconds)))
    return f"{seconds} s" if seconds < 90 else f"{seconds // 60} min {seconds % 60:02d} s"


def fuse_nodes_async(fixedVolume, movingVolume, outputVolume=None, *, progress=None, done=None,
                     timer=None, launcher: Launcher | None = None, **options) -> FusionTask:
    """Start :func:`~MedFusionLib.slicer_bridge.fuse_nodes` in the background; return at once.

    The nodes are checked and the inputs copied out of the scene first (errors in them raise
    here, before anything starts); registration, fusion and metrics then run in a child process.

    Parameters
    ----------
    fixedVolume, movingVolume, outputVolume
        As :func:`~MedFusionLib.slicer_bridge.fuse_nodes` (a missing output volume is created
        when the result is written).
    progress : callable, optional
        ``progress(fraction, status)`` on the main thread: one bar 0 -> 1, and a status line that
        names the stage and, once known, the time left.
    done : callable, optional
        ``done(task)`` when the task ends (done, failed or cancelled).
    timer : callable, optional
        A Qt timer class (``qt.QTimer``) to poll the task from the application's event loop.
        Without it the caller polls (:meth:`FusionTask.poll`) or waits (:meth:`FusionTask.wait`).
    launcher : MedFusionLib.background.Launcher, optional
        How to start the child's Python (default :func:`slicer_launcher`).
    **options
        Every other option of :func:`~MedFusionLib.slicer_bridge.fuse_nodes`.

    Returns
    -------
    FusionTask

    Raises
    ------
    InvalidInputError
        As :func:`~MedFusionLib.slicer_bridge.fuse_nodes`, for the nodes and options.
    """
    request = prepare_fusion(fixedVolume, movingVolume, outputVolume, **options)
    images = dict(request.images)
    run = start(images.pop("fixed"), images.pop("moving"), launcher=launcher or slicer_launcher(),
                initial_transform=request.initial_transform, **images, **request.options)
    return FusionTask(request, run, progress=progress, done=done, timer=timer)
