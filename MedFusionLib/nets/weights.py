"""Shipped network weights as data: a registry file with SHA-256 digests, verified on load.

The registry is ``models.json`` in the models folder: the one named by ``MEDFUSION_MODELS_DIR``,
else ``models/`` beside the package (the repository, or Slicer's scripted-modules folder), else
``<sys.prefix>/share/medfusion/models`` where a wheel installs it (:func:`models_dir`)::

    {
      "default": "fusionnet-mri-v1",
      "models": {
        "fusionnet-mri-v1": {
          "file": "fusionnet-mri-v1.pt",
          "sha256": "<64 hex digits>",
          "arch": "FusionNet",
          "config": {"channels": [16, 32], "head_channels": 16},
          "num_params": 27000,
          "description": "...",
          "metrics": {...}
        }
      },
      "pair_defaults": {"MR+PET": "fusionnet-pet-mr", "anatomical+functional": "..."}
    }

``pair_defaults`` (optional) names the model that replaces the default for one pair of
modalities or one *pair type*, chosen from the modalities the pipeline already knows
(:func:`model_for_modalities`): first the modality pair (:func:`modality_pair`, e.g. ``CT+MR``,
``MR+PET``, ``MR+SPECT``; ``8BIT+PET`` for an 8-bit grey image with a pseudo-colour PET), then
the pair type (:func:`pair_type`: ``anatomical+functional``, ``anatomical+anatomical``), then the
default model.

Loading a model reads the file's bytes once, checks their SHA-256 against the registry, and only
then deserialises them with ``torch.load(..., weights_only=True)`` (no pickled code can run). A
missing, truncated or altered file raises :class:`WeightsIntegrityError` or
:class:`WeightsNotFoundError` naming the file; there is never a silent fallback to other weights or
to random initialisation.

A weights file is a dict of plain data: ``{"format": 1, "arch": "FusionNet", "config": {...},
"state_dict": {...}, "meta": {...}}``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import threading
from pathlib import Path

from .. import optional
from ..errors import MedFusionError
from ..options import look_up
from ..outputs import atomic_output, write_text

torch = optional.lazy("torch", what="the CNN")
fusionnet = optional.lazy("MedFusionLib.nets.fusionnet", needs="torch", what="the CNN")

__all__ = [
    "WeightsError", "WeightsNotFoundError", "WeightsIntegrityError",
    "models_dir", "read_registry", "model_entry", "default_model", "list_models",
    "PAIR_TYPES", "FUNCTIONAL_MODALITIES", "pair_type", "modality_pair", "model_for_modalities",
    "sha256_of", "load_checkpoint", "load_model", "save_checkpoint", "register_model",
    "clear_cache",
]

REGISTRY_NAME = "models.json"
FORMAT_VERSION = 1
_ARCHS = ("FusionNet",)


class WeightsError(MedFusionError, RuntimeError):
    """A network weights file or the model registry is unusable."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """A model name is not in the registry, or its weights file is missing."""


class WeightsIntegrityError(WeightsError):
    """A weights file does not match its registered SHA-256 (truncated, altered) or is malformed."""


#: ``models/`` next to the ``MedFusionLib`` package: the repository root (source checkout,
#: editable install) or Slicer's ``qt-scripted-modules`` folder (installed extension).
_BESIDE_PACKAGE = Path(__file__).resolve().parents[2] / "models"


def models_dir() -> Path:
    """Folder holding ``models.json`` and the weights files.

    ``$MEDFUSION_MODELS_DIR`` if set; else ``models/`` next to the ``MedFusionLib`` package if it
    holds a registry; else ``<sys.prefix>/share/medfusion/models`` (where a wheel installs the
    shipped models) if it does; else ``models/`` next to the package (for the error message).
    """
    env = os.environ.get("MEDFUSION_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    for folder in (_BESIDE_PACKAGE, Path(sys.prefix) / "share" / "medfusion" / "models"):
        if (folder / REGISTRY_NAME).is_file():
            return folder
    return _BESIDE_PACKAGE


def read_registry(folder: str | os.PathLike | None = None) -> dict:
    """Parse ``models.json`` of ``folder`` (default :func:`models_dir`).

    Raises
    ------
    WeightsNotFoundError
        If the registry file does not exist.
    WeightsError
        If it is not valid JSON or lacks the ``models`` table.
    """
    folder = Path(folder) if folder is not None else models_dir()
    path = folder / REGISTRY_NAME
    if not path.is_file():
        raise WeightsNotFoundError(
            f"model registry {path} not found; the shipped models live in the repository's "
            "models/ folder (or set MEDFUSION_MODELS_DIR)."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"model registry {path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise WeightsError(f"model registry {path} has no 'models' table.")
    return data


def list_models(folder: str | os.PathLike | None = None) -> list[str]:
    """Sorted names of the registered models."""
    return sorted(read_registry(folder)["models"])


def default_model(folder: str | os.PathLike | None = None) -> str:
    """Name of the registry's default model."""
    reg = read_registry(folder)
    name = reg.get("default")
    if not name or name not in reg["models"]:
        raise WeightsError(
            f"model registry {Path(folder or models_dir()) / REGISTRY_NAME} names no valid "
            f"default model (got {name!r})."
        )
    return name


#: Pair types a registry's ``pair_defaults`` may name.
PAIR_TYPES = ("anatomical+anatomical", "anatomical+functional")
#: Modalities (as :mod:`MedFusionLib.normalize` names them) that are functional.
FUNCTIONAL_MODALITIES = ("PET", "SPECT")


def pair_type(modalities) -> str | None:
    """The pair type of two modalities (``("MR", "PET")`` -> ``"anatomical+functional"``).

    ``None`` when it cannot be told: modalities not given, or two sources one of which is an
    ``8BIT`` image and neither functional (a PNG says nothing of what it shows; with a PET or
    SPECT partner it is taken as the anatomy). Two functional sources count as ``None`` too (no
    model is trained for them).
    """
    if modalities is None:
        return None
    mods = [str(m).upper() for m in modalities]
    if len(mods) != 2:
        raise WeightsError(f"expected the modalities of two sources, got {modalities!r}.")
    functional = [m in FUNCTIONAL_MODALITIES for m in mods]
    if all(functional) or (not any(functional) and "8BIT" in mods):
        return None
    if any(functional):
        return "anatomical+functional"
    return "anatomical+anatomical"


def modality_pair(modalities) -> str | None:
    """Order-free key of two modalities: ``("PET", "mr")`` -> ``"MR+PET"``; ``None`` if not given."""
    if modalities is None:
        return None
    mods = sorted(str(m).upper() for m in modalities)
    if len(mods) != 2:
        raise WeightsError(f"expected the modalities of two sources, got {modalities!r}.")
    return "+".join(mods)


def model_for_modalities(modalities, folder: str | os.PathLike | None = None) -> str:
    """Registry name of the model for a pair of modalities: the registry's ``pair_defaults``
    entry for the :func:`modality_pair`, else for its :func:`pair_type`, else the default."""
    reg = read_registry(folder)
    table = reg.get("pair_defaults") or {}
    kind = modality_pair(modalities)
    name = table.get(kind) if kind else None
    if name is None:
        kind = pair_type(modalities)
        name = table.get(kind) if kind else None
    if name is None:
        return default_model(folder)
    if name not in reg["models"]:
        raise WeightsError(f"model registry {Path(folder or models_dir()) / REGISTRY_NAME} names "
                           f"'{name}' for {kind} pairs, but lists no such model.")
    return name


def model_entry(name: str | os.PathLike | None = None,
                folder: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """Resolve a model to ``(weights_path, registry_entry)``.

    Parameters
    ----------
    name : str or path, optional
        A registry name (``None`` or ``"default"``: the registry's default), or the path of a
        ``.pt`` file whose folder holds a ``models.json`` that lists it (e.g. a model written by
        ``medfusion train``).
    folder : path, optional
        Registry folder for names; default :func:`models_dir`.
    """
    if name is not None and (str(name).endswith(".pt") or os.sep in str(name)):
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file {path} does not exist.")
        reg = read_registry(path.parent)
        for key, entry in reg["models"].items():
            if entry.get("file") == path.name:
                return path, dict(entry, name=key)
        raise WeightsIntegrityError(
            f"weights file {path} is not listed in {path.parent / REGISTRY_NAME}, so its SHA-256 "
            "cannot be verified; register it (medfusion train does this) before use."
        )
    reg = read_registry(folder)
    key = default_model(folder) if name in (None, "", "default") else look_up(
        str(name), reg["models"], what="model")
    entry = reg["models"][key]
    base = Path(folder) if folder is not None else models_dir()
    return base / entry["file"], dict(entry, name=key)


def sha256_of(data: bytes | str | os.PathLike) -> str:
    """Hex SHA-256 of bytes or of a file's content."""
    if isinstance(data, (bytes, bytearray)):
        return hashlib.sha256(data).hexdigest()
    h = hashlib.sha256()
    with open(data, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(path: str | os.PathLike, *, sha256: str | None) -> dict:
    """Read a weights file, verify its SHA-256, and deserialise it with ``weights_only=True``.

    Parameters
    ----------
    path : path
        The ``.pt`` file.
    sha256 : str or None
        Expected hex digest (64 characters). ``None`` skips the check: only for files the caller
        has just written itself (e.g. ``medfusion train --init`` on its own output); every
        registry load passes the digest.

    Raises
    ------
    WeightsNotFoundError
        If the file is missing.
    WeightsIntegrityError
        If the digest differs, or the content is not a FusionNet checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"weights file {path} is missing; restore it from the repository (git checkout -- "
            f"{path.name}) or retrain it with medfusion train."
        )
    data = path.read_bytes()
    if sha256 is not None:
        digest = sha256_of(data)
        if digest.lower() != str(sha256).lower():
            raise WeightsIntegrityError(
                f"weights file {path} is corrupt or altered: its SHA-256 is {digest[:12]}..., the "
                f"registry expects {str(sha256)[:12]}... ({len(data)} bytes read); restore the "
                "file from the repository."
            )
    load = torch.load  # a missing or broken torch is said as such, not as a bad file
    try:
        ckpt = load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        # torch's own message advises retrying with weights_only=False, which would run whatever
        # code the file holds: keep only the line that says what was found
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "unsupported" in ln.lower() or "Unpickler error" in ln),
                      type(exc).__name__)
        raise WeightsIntegrityError(
            f"weights file {path} is not a plain tensor checkpoint and was not loaded ("
            f"{detail[:160]}); it may hold code: do not load it by other means, restore it from "
            "the repository.") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or ckpt.get("arch") not in _ARCHS:
        raise WeightsIntegrityError(
            f"weights file {path} is not a MedFusion checkpoint (expected a dict with 'arch' in "
            f"{_ARCHS} and a 'state_dict')."
        )
    return ckpt


def build_model(ckpt: dict):
    """Instantiate the network described by a checkpoint and load its weights (eval mode)."""
    config = dict(ckpt.get("config") or {})
    if "channels" in config:
        config["channels"] = tuple(config["channels"])
    try:
        net = fusionnet.FusionNet(**config)
        net.load_state_dict(ckpt["state_dict"], strict=True)
    except (TypeError, RuntimeError, ValueError) as exc:
        raise WeightsIntegrityError(f"checkpoint does not fit FusionNet{config}: {exc}") from exc
    return net.eval()


_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget every cached model (tests use this after replacing files)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def load_model(name: str | os.PathLike | None = None, *, device: str = "cpu",
               half: bool = False, folder: str | os.PathLike | None = None):
    """The registered model ``name`` on ``device``, verified and in eval mode; cached.

    The cache key includes the file's path, size and modification time, so a replaced file is
    verified again.

    Parameters
    ----------
    name : str or path, optional
        Registry name, ``None``/``"default"`` for the default model, or a registered ``.pt`` path.
    device : str
        torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    half : bool
        Cast the weights to float16 (CUDA only).
    """
    path, entry = model_entry(name, folder)
    try:
        st = path.stat()
    except OSError as exc:
        raise WeightsNotFoundError(
            f"weights file {path} of model '{entry['name']}' is missing; restore it from the "
            "repository or retrain it with medfusion train."
        ) from exc
    key = (str(path), st.st_size, st.st_mtime_ns, entry.get("sha256"), str(device), bool(half))
    with _CACHE_LOCK:
        net = _CACHE.get(key)
    if net is not None:
        return net
    if not entry.get("sha256"):
        raise WeightsIntegrityError(f"model '{entry['name']}' has no sha256 in its registry.")
    net = build_model(load_checkpoint(path, sha256=entry["sha256"]))
    net = net.to(device)
    if half:
        net = net.half()
    if str(device) == "cpu":
        net = net.to(memory_format=torch.channels_last)
    for p in net.parameters():
        p.requires_grad_(False)
    with _CACHE_LOCK:
        _CACHE[key] = net
    return net


def save_checkpoint(net, path: str | os.PathLike, *, meta: dict | None = None) -> str:
    """Write ``net`` as a weights file (atomically) and return its SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "format": FORMAT_VERSION,
        "arch": type(net).__name__,
        "config": {"channels": list(net.channels), "head_channels": net.head_channels,
                   "residual": net.residual},
        "state_dict": {k: v.detach().to("cpu", torch.float32).contiguous()
                       for k, v in net.state_dict().items()},
        "meta": dict(meta or {}),
    }
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    data = buf.getvalue()
    with atomic_output(path) as tmp:  # a full disk: OutputError, nothing left behind
        tmp.write_bytes(data)
    return sha256_of(data)


def register_model(path: str | os.PathLike, *, name: str | None = None, sha256: str,
                   net=None, description: str = "", metrics: dict | None = None,
                   make_default: bool = False, extra: dict | None = None) -> dict:
    """Add or update ``path``'s entry in the ``models.json`` of its folder; return the entry."""
    path = Path(path)
    reg_path = path.parent / REGISTRY_NAME
    if reg_path.is_file():
        reg = read_registry(path.parent)
    else:
        reg = {"default": None, "models": {}}
    key = name or path.stem
    entry = {"file": path.name, "sha256": sha256, "arch": "FusionNet"}
    if net is not None:
        entry["config"] = {"channels": list(net.channels), "head_channels": net.head_channels,
                           "residual": net.residual}
        entry["num_params"] = int(sum(p.numel() for p in net.parameters()))
    entry["size_bytes"] = path.stat().st_size
    if description:
        entry["description"] = description
    if metrics:
        entry["metrics"] = metrics
    if extra:
        entry.update(extra)
    reg["models"][key] = entry
    if make_default or not reg.get("default") or reg["default"] not in reg["models"]:
        reg["default"] = key
    write_text(reg_path, json.dumps(reg, indent=2, sort_keys=False) + "\n")
    return entry
