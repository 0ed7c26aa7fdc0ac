"""The pair job: the one way a pair of images is taken to finished outputs.

``medfusion fuse`` builds one :class:`PairSpec` from its arguments and runs it; ``medfusion
batch`` builds one per manifest row and runs them (in this process or on Dask workers);
``medfusion compare --manifest`` and the benchmarks read their pairs through the same spec. So the
same options give the same outputs, byte for byte, and the same errors, whichever command runs
them.

A job reads its inputs from their paths (on a cluster: from shared storage, nothing is shipped
through the scheduler), fuses them (:func:`MedFusionLib.pipeline.fuse_images`, or
:func:`MedFusionLib.colour.fuse_colour` for a colour pair), optionally scores the result, and
writes every output atomically; if a later output fails, the earlier ones are removed again. It
returns a :class:`PairRecord`: status, error, seconds per stage, the registration summary, metric
values, the method, the model and its SHA-256, and the package versions that made the result.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
import re
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import SimpleITK as sitk

from ._version import __version__
from .colour import fuse_colour
from .devices import preload_torch
from .dicom import check_derived_reference, write_fusion_dicom
from .errors import CancelledError, InvalidInputError, MedFusionError, OutputError
from .io import (RASTER_EXTENSIONS, check_image_output, check_transform_output, extension_of,
                 is_2d, is_colour, read_image, warn_far_apart, write_image, write_transform)
from .methods import default_method, get_method, method_params
from .metrics import ALL_KEYS, GREY_SCALE, resolve_keys, volume_metrics
from .nets.weights import model_entry, model_for_modalities
from .outputs import OutputSet, check_outputs, write_json
from .pipeline import align_pair, check_method, fuse_aligned
from .progress import ProgressCallback, report
from .transformfiles import read_transform

__all__ = ["PairSpec", "PairRecord", "run_pair", "align_spec", "read_sources", "check_outputs_distinct", "preflight",
           "volume_metrics_for",
           "SLOW_VOLUME_KEYS", "package_versions", "STATUSES", "WRITE_MESSAGE"]

#: The progress message a job reports right before writing its outputs: a cancel watch always
#: answers it (:func:`MedFusionLib.executors.pair_task`), so a stopped batch writes nothing more.
WRITE_MESSAGE = "writing the outputs"

#: Values of :attr:`PairRecord.status`.
STATUSES = ("ok", "failed", "skipped")

#: Metrics left out of the default set for 3D volumes: about 1 s per slice each.
SLOW_VOLUME_KEYS = ("FMI_pixel", "FMI_dct", "FMI_w")

#: Fusion options (``fuse``'s ``--fixed-mask``, ``--moving-mask``, ``--initial-transform``) that name input
#: files: they are read by the job and must never be written over.
INPUT_OPTIONS = ("fixed_mask", "moving_mask", "initial_transform")


@dataclass
class PairSpec:
    """Everything one pair job needs: inputs, options and output paths.

    Attributes
    ----------
    fixed, moving : str
        Input paths (image file or DICOM folder); the result is on ``fixed``'s grid.
    output : str
        The fused image (any format :func:`MedFusionLib.io.write_image` writes); with ``dicom``
        a folder that receives a derived DICOM series.
    fusion : dict
        The fusion options, keyed by their ``medfusion`` destination names: ``method``,
        ``registration``, ``device``, ``fixed_modality``, ``moving_modality``, ``ct_window``,
        ``seed``, ``param`` (a list of ``KEY=VALUE`` strings), ``fixed_mask``, ``moving_mask``,
        ``initial_transform``, ``strict_registration``: the keyword names of
        :func:`~MedFusionLib.pipeline.align_pair` and :func:`~MedFusionLib.pipeline.fuse_aligned`.
        Missing keys take the pipeline's defaults.
    metrics : str, optional
        Path of a JSON file for the fusion metrics and a description of what was done.
    metrics_keys : str, optional
        Comma-separated metric keys (default: see :func:`volume_metrics_for`).
    score : bool
        Compute the metrics (into :attr:`PairRecord.metrics`) even without a ``metrics`` file.
    transform : str, optional
        Path of an ITK ``.tfm`` file for the registration transform.
    weights_map : str, optional
        Path of an image for the contribution map of ``fixed`` in [0, 1].
    fixed_series, moving_series : str, optional
        SeriesInstanceUID to read from a DICOM folder with several series.
    dicom : bool
        Write the fused volume as a derived DICOM series into the folder ``output``.
    color : str, optional
        Colour fusion with this colour table (``heat``, ``rainbow``, ``grey``) for a greyscale
        PET/SPECT source; colour is also used, without a table, when an input is RGB.
    grey : bool
        Greyscale result even when an input is RGB.
    label : str
        How messages name this pair (e.g. ``"line 3"`` of a manifest); empty for ``fuse``.
    """

    fixed: str
    moving: str
    output: str
    fusion: dict = field(default_factory=dict)
    metrics: str | None = None
    metrics_keys: str | None = None
    score: bool = False
    transform: str | None = None
    weights_map: str | None = None
    fixed_series: str | None = None
    moving_series: str | None = None
    dicom: bool = False
    color: str | None = None
    grey: bool = False
    label: str = ""

    def inputs(self) -> list[str]:
        """Every path the job reads: the two sources and any input-file option."""
        return [self.fixed, self.moving] + [str(self.fusion[k]) for k in INPUT_OPTIONS
                                            if self.fusion.get(k)]

    def outputs(self) -> list[str]:
        """Every path the job writes (``output`` is a folder with ``dicom``)."""
        return [p for p in (self.output, self.metrics, self.transform, self.weights_map) if p]

    def options(self) -> dict:
        """Every option of the job but its input and output image paths and its label: what
        ``batch --resume`` compares with a recorded row before skipping it."""
        out = asdict(self)
        for k in ("fixed", "moving", "output", "label"):
            out.pop(k)
        return out

    def options_digest(self) -> str:
        """A short fingerprint (16 hex digits of a SHA-256) of :meth:`options`."""
        text = json.dumps(self.options(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def pipeline_kwargs(self) -> dict:
        """Keyword arguments of :func:`~MedFusionLib.pipeline.fuse_images` for this spec.

        ``param`` strings become the method's parameters; every other fusion option is passed
        under its own name.
        """

        kwargs = {k: v for k, v in self.fusion.items() if k != "param"}
        kwargs.update(method_params(self.fusion.get("param") or []))
        return kwargs


@dataclass
class PairRecord:
    """What one pair job did.

    Attributes
    ----------
    fixed, moving, output : str
        The spec's paths.
    status : {"ok", "failed", "skipped"}
    error : str
        The one-line error of a failed pair (empty otherwise).
    seconds : float
        Wall-clock time of the whole job.
    stages : dict
        Seconds per stage: ``read``, ``normalise``, ``register``, ``resample``, ``fuse``,
        ``metrics`` (when asked for), ``write``.
    registration : dict
        :meth:`MedFusionLib.registration.RegistrationResult.to_dict`.
    metrics : dict
        Metric values (when ``metrics`` was asked for).
    method : str
        The fusion method that ran; ``model`` and ``model_sha256`` name the CNN weights used.
    device : str
        Where the method ran.
    colour : bool
        Whether the result is a colour fusion.
    versions : dict
        Package versions (:func:`package_versions`).
    outputs : list of str
        The files written.
    label : str
        The spec's label.
    worker : str
        ``host:pid`` of the process that ran the job.
    attempts : int
        How many times the job was started (more than 1 when a worker died under it).
    options : str
        :meth:`PairSpec.options_digest` of the spec that ran.
    """

    fixed: str
    moving: str
    output: str
    status: str = "ok"
    error: str = ""
    seconds: float = 0.0
    stages: dict = field(default_factory=dict)
    registration: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    method: str = ""
    model: str = ""
    model_sha256: str = ""
    device: str = ""
    colour: bool = False
    versions: dict = field(default_factory=dict)
    outputs: list = field(default_factory=list)
    label: str = ""
    worker: str = ""
    attempts: int = 1
    options: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def check_outputs_distinct(inputs: list[str], outputs: list[str | None]) -> None:
    """Refuse to write over any file an input reads (inputs are never changed): headers, their
    detached data files (``.mhd`` -> ``.zraw``), DICOM folders' files, links and hard links
    included (:func:`MedFusionLib.outputs.check_outputs`).

    Raises
    ------
    OutputError
        If an output (or the data file it creates) is a file an input reads.
    """

    check_outputs(inputs, outputs)


def preflight(spec: PairSpec) -> None:
    """Every check of a job that needs no pixel data, before any reading or registration:
    output and transform formats, outputs against every file the inputs consist of, output
    folders present and writable (:func:`MedFusionLib.outputs.check_outputs`).

    Raises
    ------
    InvalidInputError, OutputError
    """

    for o in (None if spec.dicom else spec.output, spec.weights_map):
        if o:
            check_image_output(o)
    if spec.transform:
        check_transform_output(spec.transform)
    check_outputs(spec.inputs(),
                  [None if spec.dicom else spec.output, spec.metrics, spec.transform,
                   spec.weights_map],
                  folders=[spec.output] if spec.dicom else [])
    if spec.dicom and Path(spec.output).is_dir():
        # the derived series never overwrites: say so now, not after the whole run
        taken = sorted(f.name for f in Path(spec.output).iterdir()
                       if re.fullmatch(r"(IM|REG)\d{5}\.dcm", f.name))
        if taken:
            raise OutputError(f"{Path(spec.output) / taken[0]}: exists already (a series written "
                              "before?); write the derived series into an empty or new folder.")


def check_raster_outputs(spec: PairSpec, fixed: sitk.Image) -> None:
    """Refuse a 2D raster output (PNG, JPEG, TIFF, BMP) for a volume, once ``fixed`` is read.

    Raises
    ------
    InvalidInputError
    """

    if is_2d(fixed):
        return
    for o in (None if spec.dicom else spec.output, spec.weights_map):
        if o and extension_of(o) in RASTER_EXTENSIONS:
            raise InvalidInputError(f"{o}: {spec.fixed} is a 3D volume, which cannot be written as "
                                    f"{extension_of(o)}; use .nii.gz, .nrrd or .mha.")


def volume_metrics_for(result, keys: str | None, *,
                       progress: ProgressCallback | None = None) -> dict:
    """Metrics of a :class:`~MedFusionLib.pipeline.FusionResult`, per slice along its axis.

    ``keys`` is a comma-separated list; ``None`` means every metric, except
    :data:`SLOW_VOLUME_KEYS` for 3D volumes (they stay available by name). ``progress`` is
    told each slice (returning False cancels: the metrics of a large volume take a minute).
    """

    fused = sitk.GetArrayViewFromImage(result.fused)
    if keys:
        key_list = resolve_keys([k.strip() for k in keys.split(",") if k.strip()])
    elif fused.ndim == 3 and fused.shape[result.axis] > 1:
        key_list = [k for k in ALL_KEYS if k not in SLOW_VOLUME_KEYS]
    else:
        key_list = list(ALL_KEYS)
    return volume_metrics(result.fixed01, result.moving01, fused, axis=result.axis, keys=key_list,
                          data_range=1.0, progress=progress)


@lru_cache(maxsize=1)
def package_versions() -> dict:
    """Versions of the packages that shape a result: medfusion, Python, numpy, SimpleITK, torch."""


    out = {"medfusion": __version__, "python": platform.python_version()}
    for dist in ("numpy", "SimpleITK", "torch", "scipy", "PyWavelets"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _model_of(result) -> tuple[str, str]:
    """``(model name, registry SHA-256)`` of the CNN weights a result used; empty for other
    methods. The model is the one the method chose: given, or picked from the pair's modalities."""
    if result.method != "cnn":
        return "", ""

    model = result.params.get("model", "default")
    if model in (None, "", "default"):
        model = model_for_modalities((result.fixed_norm.modality, result.moving_norm.modality))
    _, entry = model_entry(model)
    return entry["name"], entry.get("sha256", "")


def read_sources(spec: PairSpec) -> tuple[sitk.Image, sitk.Image]:
    """The two images of a pair job, read from their paths (series UIDs applied; RGB kept as
    colour unless ``spec.grey``; with ``spec.dicom`` the fixed series is checked as the reference
    of a derived series).

    Raises
    ------
    InvalidInputError
        An input is missing or unreadable, or (``dicom``) cannot be the reference.
    """

    fixed = read_image(spec.fixed, series_uid=spec.fixed_series, keep_colour=not spec.grey)
    if spec.dicom:
        check_derived_reference(spec.fixed, fixed)
    moving = read_image(spec.moving, series_uid=spec.moving_series, keep_colour=not spec.grey)
    if (spec.fusion.get("registration") or "rigid") != "none":  # with none: the overlap error
        warn_far_apart(fixed, moving, spec.fixed, spec.moving)
    return fixed, moving


def _read_input_options(kwargs: dict) -> dict:
    """The masks and the initial transform of :data:`INPUT_OPTIONS`, read from their paths.

    Raises
    ------
    InvalidInputError
        A file is missing or unreadable.
    """


    out = {}
    for key in ("fixed_mask", "moving_mask"):
        if kwargs.get(key):
            out[key] = read_image(kwargs[key])
    path = kwargs.get("initial_transform")
    if path:
        if not Path(path).is_file():
            raise InvalidInputError(f"{path}: initial transform file not found.")
        out["initial_transform"] = read_transform(path)  # checked before ITK parses it
    return out


def _alignment_options(kwargs: dict) -> dict:
    """Pop the options of :func:`~MedFusionLib.pipeline.align_pair` (registration, modalities,
    CT window, seed, masks, initial transform, strictness) out of a spec's pipeline keywords."""


    takes = inspect.signature(align_pair).parameters
    return {k: kwargs.pop(k) for k in list(kwargs) if k in takes}


def align_spec(spec: PairSpec, *, progress: ProgressCallback | None = None):
    """The first half of a pair job: read the sources and the input-file options (masks, initial
    transform), normalise both sources and register ``moving`` onto ``fixed``.

    ``fuse`` and ``batch`` (:func:`run_pair`) go on to fuse the pair with the spec's method;
    ``compare`` fuses the same aligned pair with every method. An RGB source is read as its
    luminance (as with ``grey``); the spec's outputs are not written.

    Returns
    -------
    MedFusionLib.pipeline.AlignedPair

    Raises
    ------
    InvalidInputError, UnknownOptionError, RegistrationError, CancelledError
        As :func:`run_pair` with ``errors="raise"``.
    """

    kwargs = spec.pipeline_kwargs()
    kwargs.update(_read_input_options(kwargs))
    align = _alignment_options(kwargs)
    fixed, moving = read_sources(replace(spec, grey=True))
    return align_pair(fixed, moving, progress=progress, fixed_name=spec.fixed,
                      moving_name=spec.moving, **align)


def run_pair(spec: PairSpec, *, progress: ProgressCallback | None = None,
             errors: str = "raise",
             deliver: Callable[[PairRecord], None] | None = None) -> PairRecord:
    """Run one pair job: read, register, fuse, score, write.

    Parameters
    ----------
    spec : PairSpec
    progress : callable, optional
        ``progress(fraction, message)`` for this pair; returning False cancels.
    errors : {"raise", "record"}, optional
        ``raise`` (``fuse``): a :class:`~MedFusionLib.errors.MedFusionError` propagates.
        ``record`` (``batch``): it is returned as a ``failed`` record with its one-line message.
        Cancellation (:class:`~MedFusionLib.errors.CancelledError`, ``KeyboardInterrupt``)
        always propagates.
    deliver : callable, optional
        ``deliver(record)`` is called once with the final record: for a pair that succeeded,
        inside the commit of its outputs, right after they are in place (Ctrl-C and SIGTERM
        wait for it; if it raises, the outputs are rolled back to what was there before and its
        exception propagates); for a failed pair (``errors="record"``) before returning. ``batch``
        writes the row's results line here, so a row's outputs and its record always agree.

    Returns
    -------
    PairRecord
        Status ``ok`` with every output written, or (``errors="record"``) ``failed`` with no
        output left behind (earlier files under the output names are unchanged).

    Raises
    ------
    MedFusionError
        With ``errors="raise"``: the input's one-line error (nothing is written); either way,
        an error of ``deliver``.
    """

    if errors not in ("raise", "record"):
        raise ValueError(f"errors must be 'raise' or 'record', got {errors!r}")
    record = PairRecord(spec.fixed, spec.moving, spec.output, label=spec.label,
                        worker=f"{socket.gethostname()}:{os.getpid()}",
                        versions=package_versions(), options=spec.options_digest())
    t0 = time.perf_counter()
    delivered = []

    def finish(rec: PairRecord) -> None:
        rec.seconds = time.perf_counter() - t0
        delivered.append(rec)
        if deliver is not None:
            deliver(rec)

    try:
        _run(spec, record, progress, finish)
    except CancelledError:
        raise
    except MedFusionError as exc:
        if delivered or errors == "raise":  # delivered: the caller's own delivery failed
            raise
        record.status, record.error = "failed", str(exc)
        record.outputs = []
    if not delivered:
        finish(record)
    return record


def _run(spec: PairSpec, record: PairRecord, progress,
         finish: Callable[[PairRecord], None]) -> None:
    preflight(spec)
    kwargs = spec.pipeline_kwargs()  # a bad --param fails before any reading
    kwargs.update(_read_input_options(kwargs))
    # torch is imported on the core that registration leaves free (reading and normalising hold
    # the GIL too often to share it)
    preload = preload_torch if get_method(kwargs.get("method") or default_method()).needs_torch else None
    t0 = time.perf_counter()
    fixed, moving = read_sources(spec)
    record.stages["read"] = time.perf_counter() - t0
    colour = spec.color is not None or is_colour(fixed) or is_colour(moving)
    if colour and spec.dicom:
        raise InvalidInputError(f"{spec.output}: --dicom writes a greyscale series; add --grey "
                                "(or leave out --color).")
    check_raster_outputs(spec, fixed)  # before registration and fusion, not after
    if colour:
        result = fuse_colour(fixed, moving, table=spec.color or "heat",
                             return_weights=bool(spec.weights_map), progress=progress,
                             fixed_name=spec.fixed, moving_name=spec.moving, **kwargs)
    else:
        # fuse_images in two steps, so that the sources read here are freed once normalised:
        # a 3D pair then peaks at its two normalised arrays, the result and one batch of slices
        align = _alignment_options(kwargs)
        fusion = {k: kwargs.pop(k) for k in ("method", "device") if k in kwargs}
        check_method(fusion.get("method"), kwargs, return_weights=bool(spec.weights_map),
                     device=fusion.get("device", "auto"))
        pair = align_pair(fixed, moving, progress=progress, fixed_name=spec.fixed,
                          moving_name=spec.moving, while_registering=preload, **align)
        del fixed, moving
        result = fuse_aligned(pair, return_weights=bool(spec.weights_map), progress=progress,
                              **fusion, **kwargs)
        del pair
    record.stages.update(result.timings)
    record.method, record.device, record.colour = result.method, result.device, colour
    record.registration = result.registration.to_dict()
    record.model, record.model_sha256 = _model_of(result)
    metrics_json = None
    if spec.metrics or spec.score:
        t0 = time.perf_counter()
        record.metrics = volume_metrics_for(result, spec.metrics_keys, progress=progress)
        record.stages["metrics"] = time.perf_counter() - t0
    if spec.metrics:
        metrics_json = {"fixed": spec.fixed, "moving": spec.moving, "output": spec.output,
                  **result.summary(), "grey_scale": GREY_SCALE, "metrics": record.metrics}
    # the normalised sources are not written: free them before the (verified) writes
    result.fixed01 = result.moving01 = None
    report(progress, None, WRITE_MESSAGE)  # the last point at which a cancel stops the job
    t0 = time.perf_counter()

    def committed(paths):
        record.stages["write"] = time.perf_counter() - t0
        record.outputs = [str(p) for p in paths]
        finish(record)

    # all or nothing: every file is staged and verified, then all are renamed into place (an
    # earlier result under these names stays as it was if anything fails)
    with OutputSet([None if spec.dicom else spec.output, spec.weights_map, spec.transform,
                    spec.metrics], folders=[spec.output] if spec.dicom else [], then=committed):
        if spec.dicom:
            write_fusion_dicom(
                result.fused, spec.output, fixed=spec.fixed, moving=spec.moving,
                fixed_series_uid=spec.fixed_series, moving_series_uid=spec.moving_series,
                transform=result.registration.transform, method=result.method)
        else:
            write_image(result.rgb if colour else result.fused, spec.output)
        if spec.weights_map:
            write_image(result.weights, spec.weights_map)
        if spec.transform:
            write_transform(result.registration.transform, spec.transform)
        if metrics_json is not None:
            write_json(metrics_json, spec.metrics)
