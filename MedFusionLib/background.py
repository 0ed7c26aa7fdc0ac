"""Fusing a pair in a child process, so that an interactive application stays usable meanwhile.

The 3D Slicer panel uses it (:mod:`MedFusionLib.slicer_bridge.task`): everything slow -- reading
the sources into the engine, registration, fusion, metrics -- runs in a separate Python process
and the application's main thread only polls for progress. Cancel ends the child within a second;
nothing is handed back unless the child finished and its outputs were read.

How a run goes
--------------
1. :func:`start` takes the two images (SimpleITK, already copied out of the application), the
   options of :func:`MedFusionLib.interactive.run_engine` and how to launch a Python interpreter.
   It returns at once: a thread takes the child waiting in standby (:func:`prewarm`) or starts
   one, so that the child imports the library (and PyTorch, when the method needs it) while the
   thread saves the images into a private temporary job folder (``.npy`` files, geometry in
   ``job.json``; numpy releases the GIL while writing), then gives the child the folder's path
   as one line on its standard input.
2. The child (:func:`worker_main`, started as ``python -c BOOTSTRAP LIBRARY METHOD``) waits
   for that line (end of input without it: it exits 130, nothing done), runs
   :func:`~MedFusionLib.interactive.run_engine` and prints one protocol line per event on its
   standard output: ``@medfusion {"progress": 0.42, "message": "..."}``, then ``{"done": true}``
   or ``{"error": "...", "type": "InvalidInputError"}``. Any other line is its log.
3. A reader thread parses those lines into a queue and, after ``done``, loads the outputs (numpy,
   off the caller's thread). :meth:`BackgroundFusion.poll` drains the queue on the caller's
   thread; :meth:`BackgroundFusion.wait` blocks until the end (scripts, tests).
4. The job folder is removed when the run ends, whatever the outcome. A child whose parent died
   stops at its next progress report.

No thread here touches anything but files, numpy arrays, SimpleITK images and the child process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import errors, optional
from .errors import CancelledError, MedFusionError
from .interactive import run_engine
from .methods import METHODS
from .registration import RegistrationResult

__all__ = ["BackgroundFusion", "Launcher", "start", "prewarm", "discard_standby", "worker_main",
           "PROTOCOL_PREFIX"]

logger = logging.getLogger("MedFusionLib")

#: Protocol lines on the child's standard output start with this.
PROTOCOL_PREFIX = "@medfusion "

#: Seconds between SIGTERM and SIGKILL when a run is cancelled.
KILL_GRACE_S = 0.5

#: How the child imports the library from its folder alone (no other folder is put on sys.path),
#: then runs :func:`worker_main`. argv: [library folder, method name].
BOOTSTRAP = (
    "import importlib.util, os, sys\n"
    "lib = sys.argv[1]\n"
    "spec = importlib.util.spec_from_file_location('MedFusionLib', os.path.join(lib, '__init__.py'),"
    " submodule_search_locations=[lib])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "sys.modules['MedFusionLib'] = module\n"
    "spec.loader.exec_module(module)\n"
    "from MedFusionLib.background import worker_main\n"
    "sys.exit(worker_main(sys.argv[2:]))\n"
)

#: The library folder (``.../MedFusionLib``) the child imports.
LIBRARY = Path(__file__).resolve().parent

#: The standby child (:func:`prewarm`): (launcher, process), or None.
_standby = None
_standby_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Launcher:
    """How to start the child's Python interpreter.

    Attributes
    ----------
    python : list of str
        The interpreter command (``[sys.executable]``; in 3D Slicer ``PythonSlicer``).
    env : dict or None
        The child's environment (None: this process's). Computed by the caller on its own
        thread (3D Slicer's start-up environment is read through Qt).
    """

    python: tuple = (sys.executable,)
    env: dict | None = None


@dataclasses.dataclass
class RemoteFusion:
    """A fusion computed by the child, as handed back: the attributes of a
    :class:`~MedFusionLib.pipeline.FusionResult` that leave the child (the normalised sources
    stay there: ``fixed01``/``moving01`` are None).

    ``fused``/``weights`` are ``float32`` images in [0, 1] and ``rgb`` a ``uint8`` RGB image on the
    fixed grid; ``functional``/``colour_table`` describe a colour fusion (else empty).
    """

    fused: sitk.Image
    weights: sitk.Image | None
    rgb: sitk.Image | None
    registration: RegistrationResult
    method: str
    device: str
    axis: int = 0
    params: dict = dataclasses.field(default_factory=dict)
    timings: dict = dataclasses.field(default_factory=dict)
    functional: str = ""
    colour_table: str = ""
    summary_data: dict = dataclasses.field(default_factory=dict)
    fixed01: None = None
    moving01: None = None

    def summary(self) -> dict:
        """JSON-ready description of what was done (as :meth:`FusionResult.summary`)."""
        return dict(self.summary_data)


# -------------------------------------------------------------------------------------------------
# Images and transforms through the job folder
# -------------------------------------------------------------------------------------------------

def _geometry(image: sitk.Image) -> dict:
    return {"origin": list(image.GetOrigin()), "spacing": list(image.GetSpacing()),
            "direction": list(image.GetDirection()),
            "vector": image.GetNumberOfComponentsPerPixel() > 1,
            "metadata": {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()}}


def _save_array(image: sitk.Image, path: Path) -> None:
    np.save(path, sitk.GetArrayViewFromImage(image), allow_pickle=False)


def _load_image(path: Path, geometry: dict) -> sitk.Image:
    # Mapped, not read: SimpleITK copies the pages once into its own buffer (a plain np.load
    # would fill a second array first; on a 512x512x400 study that doubles the time).
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    image = sitk.GetImageFromArray(array, isVector=geometry["vector"])
    del array  # unmap before the job folder is removed
    image.SetOrigin(geometry["origin"])
    image.SetSpacing(geometry["spacing"])
    image.SetDirection(geometry["direction"])
    for key, value in geometry["metadata"].items():
        image.SetMetaData(key, value)
    return image


def _registration_from(summary: dict, transform: sitk.Transform) -> RegistrationResult:
    names = {f.name for f in dataclasses.fields(RegistrationResult)} - {"transform"}
    return RegistrationResult(transform=transform, **{k: v for k, v in summary.items() if k in names})


# -------------------------------------------------------------------------------------------------
# The child
# -------------------------------------------------------------------------------------------------

def _emit(**event) -> None:
    sys.stdout.write(PROTOCOL_PREFIX + json.dumps(event) + "\n")
    sys.stdout.flush()


def _prepare(method: str | None) -> None:
    """Import PyTorch now when ``method`` needs it (about 1.5 s), while the parent writes the job
    or the child waits in standby; a torch that fails to import is left for the engine to report
    in its own words."""
    if method in METHODS and METHODS[method].needs_torch and optional.available("torch"):
        try:
            optional.require("torch")
        except MedFusionError:
            pass


def worker_main(argv: list[str]) -> int:
    """The child's entry point: ``argv`` = [method name (may be empty)]. Imports what the method
    needs, reads the job folder's path from standard input, then runs the job; returns the exit
    status (0 done, 2 the input's error, 1 a bug, 130 cancelled: the parent is gone, or closed
    the input without giving a job)."""
    _prepare(argv[0] if argv else None)
    line = sys.stdin.readline().strip() if sys.stdin is not None else ""
    if not line:
        return 130
    job = Path(line)
    parent = os.getppid()

    def progress(fraction, message):
        if os.getppid() != parent:  # the parent died: nobody will read the result
            return False
        _emit(progress=fraction, message=message)
        return None

    try:
        spec = json.loads((job / "job.json").read_text(encoding="utf-8"))
        images = {name: _load_image(job / f"{name}.npy", geometry)
                  for name, geometry in spec["images"].items()}
        options = dict(spec["options"])
        if (job / "initial.tfm").is_file():
            options["initial_transform"] = sitk.ReadTransform(str(job / "initial.tfm"))
        result = run_engine(images.pop("fixed"), images.pop("moving"), progress=progress,
                            **options, **images)
        progress(0.98, "handing the result back")
        _write_outputs(result, job / "out")
    except CancelledError:
        shutil.rmtree(job, ignore_errors=True)
        return 130
    except MedFusionError as exc:
        _emit(error=str(exc), type=type(exc).__name__)
        return 2
    except Exception as exc:  # a bug: say where, keep the traceback in the log
        traceback.print_exc(file=sys.stdout)
        where = traceback.extract_tb(exc.__traceback__)[-1]
        _emit(error=f"{type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})",
              type="bug")
        return 1
    _emit(done=True)
    return 0


def _write_outputs(result, out: Path) -> None:
    fusion = result.fusion
    out.mkdir()
    _save_array(fusion.fused, out / "fused.npy")
    for name in ("weights", "rgb"):
        image = getattr(fusion, name, None)
        if image is not None:
            _save_array(image, out / f"{name}.npy")
    sitk.WriteTransform(fusion.registration.transform, str(out / "transform.tfm"))
    summary = fusion.summary()
    (out / "result.json").write_text(json.dumps({
        "geometry": _geometry(fusion.fused), "rgb_geometry": _geometry(fusion.rgb)
        if getattr(fusion, "rgb", None) is not None else None,
        "registration": fusion.registration.to_dict(), "method": fusion.method,
        "device": str(fusion.device), "axis": int(fusion.axis), "params": fusion.params,
        "timings": fusion.timings, "functional": getattr(fusion, "functional", ""),
        "colour_table": getattr(fusion, "colour_table", ""), "summary": summary,
        "metrics": result.metrics, "directions": result.directions,
    }, default=_json_default), encoding="utf-8")


def _json_default(value):
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# -------------------------------------------------------------------------------------------------
# The parent
# -------------------------------------------------------------------------------------------------

class BackgroundFusion:
    """A fusion running in a child process (see the module docstring); made by :func:`start`.

    Attributes
    ----------
    state : {"running", "done", "failed", "cancelled"}
    fraction : float
        Progress in [0, 1], never decreasing.
    message : str
        What the child is doing (the engine's own words).
    result : (RemoteFusion, dict, dict) or None
        When ``done``: the fusion, the metrics and their directions.
    error : MedFusionError or None
        When ``failed``: the one-line error (the child's own for a bad input).
    seconds : float
        Time since :func:`start`.
    """

    def __init__(self, job: Path, launcher: Launcher):
        self.job = job
        self.launcher = launcher
        self.state = "running"
        self.fraction = 0.0
        self.message = "starting"
        self.result = None
        self.error: MedFusionError | None = None
        self._t0 = time.perf_counter()
        self._events: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._proc_lock = threading.Lock()
        self._log: deque = deque(maxlen=30)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._t0

    @property
    def finished(self) -> bool:
        return self.state != "running"

    @property
    def pid(self) -> int | None:
        """The child's process id once it runs."""
        return self._proc.pid if self._proc is not None else None

    # -- what the caller's thread does ------------------------------------------------------------

    def poll(self) -> list[tuple]:
        """Take in what happened since the last call (cheap: no I/O); returns the events, e.g.
        ``("progress", fraction, message)``, ``("done",)``, ``("failed", error)``."""
        events = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return events
            if self.finished:
                continue  # e.g. output of a child that was cancelled meanwhile
            kind = event[0]
            if kind == "progress":
                fraction = event[1]
                if fraction is not None:
                    self.fraction = max(self.fraction, min(float(fraction), 1.0))
                self.message = event[2]
            elif kind == "done":
                self.result, self.state = event[1], "done"
            elif kind == "failed":
                self.error, self.state = event[1], "failed"
            events.append(event)

    def cancel(self) -> None:
        """Stop the run now: the child is terminated (killed after :data:`KILL_GRACE_S`), its job
        folder removed; nothing is handed back."""
        if self.finished:
            return
        self.state = "cancelled"
        self.message = "cancelled"
        self._cancel.set()
        with self._proc_lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            threading.Thread(target=self._kill_later, args=(proc,), daemon=True).start()

    def wait(self, timeout: float | None = None, interval: float = 0.05):
        """Block until the run ends; return :attr:`result` or raise :attr:`error`.

        Raises
        ------
        MedFusionError
            The run failed (:class:`~MedFusionLib.errors.CancelledError` when cancelled).
        TimeoutError
            Still running after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            self.poll()
            if self.finished:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the background fusion is still running after {timeout} s")
            time.sleep(interval)
        if self.state == "failed":
            raise self.error
        if self.state == "cancelled":
            raise CancelledError("the fusion was cancelled; nothing was written.")
        return self.result

    def child_alive(self) -> bool:
        """Whether the child process still runs."""
        return self._proc is not None and self._proc.poll() is None

    # -- the threads --------------------------------------------------------------------------------

    def _kill_later(self, proc: subprocess.Popen) -> None:
        try:
            proc.wait(KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()

    def _run(self, inputs: dict, spec: dict, initial_transform) -> None:
        """Take or start the child, write the job while it starts up, give it the job folder, then
        read it to its end."""
        reader = None
        try:
            with self._proc_lock:
                if self._cancel.is_set():
                    return
                self._proc = proc = (_take_standby(self.launcher)
                                     or _launch(self.launcher, spec["options"].get("method")))
            reader = threading.Thread(target=self._read, args=(proc,), daemon=True,
                                      name="medfusion-background-reader")
            reader.start()
            try:
                self._write_job(inputs, spec, initial_transform)
            except Exception as exc:  # e.g. a full disk: said before the child's exit is seen
                self._events.put(("failed", MedFusionError(
                    f"the fusion's inputs could not be written to {self.job}: "
                    f"{type(exc).__name__}: {exc}")))
                _close_quietly(proc.stdin)  # no go: the child exits
                return
            try:
                if not self._cancel.is_set():
                    proc.stdin.write(str(self.job) + "\n")
            except OSError:
                pass  # the child is gone already: the reader says why
            _close_quietly(proc.stdin)
        except Exception as exc:  # e.g. the interpreter cannot be started
            self._events.put(("failed", MedFusionError(
                f"the fusion process could not run: {type(exc).__name__}: {exc}")))
        finally:
            if reader is not None:
                reader.join()
            shutil.rmtree(self.job, ignore_errors=True)

    def _write_job(self, inputs: dict, spec: dict, initial_transform) -> None:
        for name, image in inputs.items():
            if self._cancel.is_set():
                return
            _save_array(image, self.job / f"{name}.npy")
        if initial_transform is not None:
            sitk.WriteTransform(initial_transform, str(self.job / "initial.tfm"))
        (self.job / "job.json").write_text(json.dumps(spec, default=_json_default),
                                           encoding="utf-8")

    def _read(self, proc: subprocess.Popen) -> None:
        done, error = False, None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if not line.startswith(PROTOCOL_PREFIX):
                self._log.append(line)
                logger.info("fusion process: %s", line)
                continue
            try:
                event = json.loads(line[len(PROTOCOL_PREFIX):])
            except json.JSONDecodeError:
                self._log.append(line)
                continue
            if "progress" in event:
                self._events.put(("progress", event["progress"], event.get("message", "")))
            elif event.get("done"):
                done = True
            elif "error" in event:
                error = _error_of(event)
        code = proc.wait()
        if self._cancel.is_set():
            return
        if done and code == 0:
            try:
                self._events.put(("done", self._load()))
            except Exception as exc:
                self._events.put(("failed", MedFusionError(
                    f"the fusion's results could not be read back: {type(exc).__name__}: {exc}")))
            return
        if error is None:
            last = next((t for t in reversed(self._log) if t.strip()), "")
            error = MedFusionError(
                f"the fusion process stopped unexpectedly ({_describe_exit(code)}); nothing was "
                "written." + (f" Its last message: {last.strip()[:200]}" if last else ""))
        self._events.put(("failed", error))

    def _load(self):
        out = self.job / "out"
        info = json.loads((out / "result.json").read_text(encoding="utf-8"))
        geometry = info["geometry"]
        weights = _load_image(out / "weights.npy", geometry) if (out / "weights.npy").is_file() else None
        rgb = _load_image(out / "rgb.npy", info["rgb_geometry"]) if info["rgb_geometry"] else None
        registration = _registration_from(info["registration"],
                                          sitk.ReadTransform(str(out / "transform.tfm")))
        fusion = RemoteFusion(
            fused=_load_image(out / "fused.npy", geometry), weights=weights, rgb=rgb,
            registration=registration, method=info["method"], device=info["device"],
            axis=info["axis"], params=info["params"], timings=info["timings"],
            functional=info["functional"], colour_table=info["colour_table"],
            summary_data=info["summary"])
        return fusion, info["metrics"], info["directions"]


def _launch(launcher: Launcher, method: str | None) -> subprocess.Popen:
    """Start a child (it imports what ``method`` needs, then waits for its job on stdin)."""
    extra = {}
    if os.name == "nt":  # no console window, as Slicer's launchConsoleProcess
        info = subprocess.STARTUPINFO()
        info.dwFlags, info.wShowWindow = 1, 0
        extra["startupinfo"] = info
    return subprocess.Popen(
        [*launcher.python, "-c", BOOTSTRAP, str(LIBRARY), str(method or "")],
        env=launcher.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", **extra)


def prewarm(launcher: Launcher | None = None, method: str | None = None) -> None:
    """Start a child in standby, so that the next :func:`start` with the same launcher finds the
    library (and PyTorch, when ``method`` needs it) imported (about 2 s on a CPU, which a child
    started at :func:`start` spends while, and after, the inputs are written).

    Returns at once (the process is started on a thread). At most one child waits; one already
    waiting for this launcher is kept, one for another launcher is ended. A waiting child uses no
    CPU and exits when this process does, or on :func:`discard_standby`.
    """
    launcher = launcher or Launcher()

    def spawn():
        global _standby
        with _standby_lock:
            if _standby is not None and _standby[1].poll() is None and _standby[0] == launcher:
                return
            _end(_standby)
            try:
                _standby = (launcher, _launch(launcher, method))
            except OSError as exc:  # start() will say it in its own error
                logger.info("no standby fusion process: %s", exc)
                _standby = None

    threading.Thread(target=spawn, daemon=True, name="medfusion-prewarm").start()


def discard_standby() -> None:
    """End the child waiting in standby, if any (e.g. when the application closes)."""
    global _standby
    with _standby_lock:
        _end(_standby)
        _standby = None


def _take_standby(launcher: Launcher) -> subprocess.Popen | None:
    global _standby
    with _standby_lock:
        taken, _standby = _standby, None
    if taken is not None and taken[0] == launcher and taken[1].poll() is None:
        return taken[1]
    _end(taken)
    return None


def _end(standby) -> None:
    if standby is not None:
        _close_quietly(standby[1].stdin)  # no job: the child exits 130
        threading.Thread(target=standby[1].wait, daemon=True).start()  # reaped, no zombie


def _close_quietly(stream) -> None:
    try:
        stream.close()
    except OSError:  # a child that is gone already: its exit is read and reported elsewhere
        pass


def _error_of(event: dict) -> MedFusionError:
    kind = getattr(errors, str(event.get("type")), None)
    message = str(event["error"])
    if isinstance(kind, type) and issubclass(kind, MedFusionError):
        return kind(message)
    return MedFusionError(f"the fusion failed: {message}")


def _describe_exit(code: int) -> str:
    if code is not None and code < 0:
        names = {9: "killed (SIGKILL), e.g. by the system when memory ran out", 15: "terminated",
                 11: "crashed (segmentation fault)", 6: "aborted"}
        return f"exit signal {-code}: {names.get(-code, 'signal')}"
    return f"exit code {code}"


#: Where job folders go when it has room: memory (tmpfs), so that the ~1 GB a 512 x 512 x 400
#: study passes each way is not also written back to disk while the child works.
SHARED_MEMORY = Path("/dev/shm")


def _job_folder(inputs: dict, fixed: sitk.Image) -> Path:
    """A new private folder for one job: in :data:`SHARED_MEMORY` when it has room for the
    inputs and the outputs (the fused image, weights and an RGB image on the fixed grid, with
    a margin), else in the system's temporary folder."""
    inputs_bytes = sum(sitk.GetArrayViewFromImage(image).nbytes for image in inputs.values())
    outputs_bytes = 4 * 3 * int(np.prod(fixed.GetSize(), dtype=np.int64))
    try:
        room = shutil.disk_usage(SHARED_MEMORY).free if SHARED_MEMORY.is_dir() else 0
    except OSError:
        room = 0
    where = SHARED_MEMORY if room > 2 * (inputs_bytes + outputs_bytes) + 2 ** 28 else None
    return Path(tempfile.mkdtemp(prefix="medfusion-job-", dir=where))


def start(fixed: sitk.Image, moving: sitk.Image, *, launcher: Launcher | None = None,
          fixed_mask: sitk.Image | None = None, moving_mask: sitk.Image | None = None,
          initial_transform: sitk.Transform | None = None, **options) -> BackgroundFusion:
    """Start :func:`~MedFusionLib.interactive.run_engine` on two images in a child process.

    Returns at once; the images are written and the child started by a thread. The images must
    not be changed until the run ends (they are the caller's copies).

    Parameters
    ----------
    fixed, moving : SimpleITK.Image
        The sources (and optional label masks ``fixed_mask``, ``moving_mask``).
    launcher : Launcher, optional
        How to start Python (default: this interpreter, this environment).
    initial_transform : SimpleITK.Transform, optional
        Registration start (fixed -> moving).
    **options
        JSON-serialisable options of :func:`~MedFusionLib.interactive.run_engine` (method,
        registration, device, modalities, ``ct_window``, ``colour_table`` as a name or RGB rows,
        ``functional``, ``return_weights``, ``metric_keys``, the method's parameters, ...).

    Returns
    -------
    BackgroundFusion
    """
    launcher = launcher or Launcher()
    inputs = {"fixed": fixed, "moving": moving}
    if fixed_mask is not None:
        inputs["fixed_mask"] = fixed_mask
    if moving_mask is not None:
        inputs["moving_mask"] = moving_mask
    job = _job_folder(inputs, fixed)
    spec = {"images": {name: _geometry(image) for name, image in inputs.items()},
            "options": options}
    run = BackgroundFusion(job, launcher)
    threading.Thread(target=run._run, args=(inputs, spec, initial_transform), daemon=True,
                     name="medfusion-background").start()
    return run
