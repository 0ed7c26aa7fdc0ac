"""Unsupervised, reproducible training of :class:`~MedFusionLib.nets.fusionnet.FusionNet`.

No ground-truth fused images exist, so the network is trained with a *fusion loss* that scores a
fused slice ``F`` against its two sources ``A`` and ``B`` (all in [0, 1]): a weighted sum of the
terms of :data:`LOSS_TERMS`, chosen per run in the config. They are the classic unsupervised
fusion terms (intensity fidelity to the brighter source, gradient fidelity to the stronger
source edge, SSIM to both sources) and differentiable forms of the fusion-quality metrics
(:mod:`MedFusionLib.nets.losses`: Q^AB/F edge transfer, VIF, SCD, and contrast, sharpness and
entropy rewards capped relative to the sources so that noise cannot win them). The terms score
the clipped output; a penalty keeps the raw output in [0, 1].

A fraction of the pairs are a slice with itself; for them the loss asks ``F = A``
(``identity`` term), which keeps the network an identity on identical inputs.

Training data (built in memory, nothing is downloaded): axial slices of the MNI152 T1 template and
of the synthetic CT-like and PET-like volumes derived from its tissue maps
(:func:`MedFusionLib.datasets.sample_volumes`), plus *random-contrast* images synthesised from the
same tissue maps (grey matter, white matter, CSF, bone, scalp, each with a random intensity).
An axial slab (``holdout_z``) is never used in training; it is part of the validation set.
Augmentation randomises the contrast of each source independently (gamma, inversion of the head,
intensity scale, Gaussian blur and noise, random CT windows, source order, flips and 90 degree
rotations), so the network does not learn one modality pair.

Fine-tuning (transfer learning, review §2.6): ``--init`` a trained model and ``--data DIR`` with a
user's own co-registered pairs. Layout of ``DIR``::

    DIR/A/<name>.<ext>   first source (e.g. MR)
    DIR/B/<name>.<ext>   second source (e.g. CT, PET, SPECT), same name, same grid

Any format :func:`MedFusionLib.io.read_image` reads (PNG, NIfTI, NRRD, MHA, DICOM folders); 3D
volumes contribute every axial slice. Each image is normalised by
:func:`MedFusionLib.normalize.normalize` with its guessed modality.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .devices import resolve_device
from .errors import InvalidInputError
from .jsonfiles import read_json_object
from .nets import losses as L
from .nets import pair_losses as PL
from .nets.fusionnet import FEATURE_RULES, FusionNet
from .nets.weights import (build_model, load_checkpoint, model_entry, register_model,
                           save_checkpoint)
from .progress import ProgressCallback, report
from .training_data import SliceBank, folder_bank, functional_bank, mni_bank

__all__ = ["TrainConfig", "load_config", "fusion_loss", "LOSS_TERMS", "DEFAULT_LOSS", "train",
           "TrainResult"]


@dataclass
class TrainConfig:
    """Settings of one training run (all fields may be given in the JSON config file).

    Attributes
    ----------
    seed : int
        Seeds numpy and torch; the same config, data and seed give the same weights.
    steps : int
        Optimizer steps.
    batch_size : int
        Pairs per step.
    patch : int
        Side of the square training crops (pixels; a multiple of 4).
    lr : float
        Peak Adam learning rate (cosine decay to 5 %, after ``warmup`` steps of linear warm-up).
    warmup : int
        Warm-up steps.
    weight_decay : float
        Adam weight decay.
    grad_clip : float
        Maximum gradient norm (0: no clipping).
    channels : list of int
        FusionNet feature channels ``[c1, c2]`` (ignored with ``--init``: the model's own).
    head_channels : int
        FusionNet weight-head width (ignored with ``--init``).
    residual : bool
        FusionNet long skip from the weighted source pixels. With ``--init``, ``true`` turns a
        plain model into a residual one (:meth:`FusionNet.as_residual`); ``false`` keeps the
        model's own structure.
    loss : dict
        Weights of the loss terms (:data:`LOSS_TERMS`).
    caps : dict
        Caps of the ``sd``, ``sf`` and ``en`` rewards and the ``hot`` focus margin (see
        :func:`fusion_loss`).
    identity_prob : float
        Fraction of pairs made of a slice with itself.
    rule_mix : float
        Fraction of steps that fuse with a random fixed rule (addition/average/maximum/l1) instead
        of the learned weights, so the decoder serves every rule.
    holdout_z : list of int
        ``[z0, z1)``: MNI axial slices never used for training (validation slab).
    bank : str
        Built-in training pairs when no ``--data`` folder is given: ``mni`` (MR, CT, PET and
        random contrasts, every combination; :func:`mni_bank`) or ``functional`` (anatomical +
        functional pairs only, with simulated FDG-PET and perfusion SPECT, grey and pseudo-colour;
        :func:`functional_bank`).
    functional_volumes : int
        FDG-PET-like and SPECT-like volumes each in the ``functional`` bank.
    log_every : int
        Steps between progress messages.
    pair_type : str or None
        ``ct-mr``, ``pet-mr`` or ``spect-mr``: train on that pair type of the Harvard atlas
        folder given as ``--data`` (:mod:`MedFusionLib.training_atlas`) instead of ``bank``.
    split : str or None
        The atlas split file (repository-relative or absolute; default
        ``Resources/SampleData/aanlib-split.json``).
    val_every : int
        Score the network on the validation pairs every this many steps and keep the best
        checkpoint (0: no validation, the last step is kept).
    reference : str
        Registry name of the model the validation's anatomy guard compares with.
    val_limit : int
        At most this many validation pairs (every k-th; 0: all).
    val_guard : dict
        Tolerances of the anatomy guard on the validation pairs, overriding
        :data:`MedFusionLib.pair_targets.DEFAULT_GUARD` (e.g. ``{"VIF": 0.01}``: keep VIF within
        1 % on validation so that the held-out cases have room for the target's 2 %).
    val_hot : bool
        Checkpoint selection also keeps the hot foci of the second source
        (:func:`MedFusionLib.pair_targets.selection_key` ``hot``).
    val_per_case : bool
        Checkpoint selection also requires the target's anatomy guard on each validation case
        on its own (:class:`MedFusionLib.training_atlas.AtlasValidator` ``per_case``).
    """

    seed: int = 0
    steps: int = 3000
    batch_size: int = 16
    patch: int = 96
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    channels: list = field(default_factory=lambda: [16, 32])
    head_channels: int = 16
    residual: bool = False
    loss: dict = field(default_factory=lambda: dict(DEFAULT_LOSS))
    caps: dict = field(default_factory=dict)
    identity_prob: float = 0.08
    rule_mix: float = 0.25
    holdout_z: list = field(default_factory=lambda: [75, 115])
    log_every: int = 100
    bank: str = "mni"
    functional_volumes: int = 4
    pair_type: str | None = None
    split: str | None = None
    val_every: int = 0
    reference: str = "fusionnet"
    val_limit: int = 0
    val_guard: dict = field(default_factory=dict)
    val_hot: bool = False
    val_per_case: bool = False

    def validate(self) -> "TrainConfig":
        """Check ranges; raise :class:`InvalidInputError` naming the bad field."""
        checks = [
            ("steps", self.steps >= 1), ("batch_size", self.batch_size >= 1),
            ("patch", self.patch >= 8 and self.patch % 4 == 0), ("lr", self.lr > 0),
            ("warmup", self.warmup >= 0), ("identity_prob", 0 <= self.identity_prob <= 1),
            ("rule_mix", 0 <= self.rule_mix <= 1), ("log_every", self.log_every >= 1),
            ("channels", len(self.channels) == 2 and all(int(c) >= 1 for c in self.channels)),
            ("holdout_z", len(self.holdout_z) == 2 and self.holdout_z[0] <= self.holdout_z[1]),
            ("bank", self.bank in ("mni", "functional")),
            ("functional_volumes", self.functional_volumes >= 1),
            ("pair_type", self.pair_type in (None, "ct-mr", "pet-mr", "spect-mr")),
            ("val_every", self.val_every >= 0), ("val_limit", self.val_limit >= 0),
            ("val_guard", set(self.val_guard) <= {"Qabf", "VIF", "SSIM"} and all(
                isinstance(v, (int, float)) and 0 <= v < 1 for v in self.val_guard.values())),
        ]
        for name, ok in checks:
            if not ok:
                raise InvalidInputError(f"training config: invalid value for '{name}': "
                                        f"{getattr(self, name)!r}.")
        bad_caps = set(self.caps) - {"sd", "sf", "en", "hot"}
        if bad_caps:
            raise InvalidInputError(f"training config: unknown cap(s) {sorted(bad_caps)}; "
                                    "known: sd, sf, en, hot.")
        unknown = set(self.loss) - set(LOSS_TERMS)
        if unknown:
            raise InvalidInputError(f"training config: unknown loss term(s) {sorted(unknown)}; "
                                    f"known: {', '.join(LOSS_TERMS)}.")
        return self


def load_config(path: str | os.PathLike | None) -> TrainConfig:
    """Read a JSON training config (missing keys take the defaults of :class:`TrainConfig`)."""
    if path is None:
        return TrainConfig().validate()
    path = Path(path)
    data = read_json_object(path, "training config")
    known = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(set(data) - known - {"comment"})
    if unknown:
        raise InvalidInputError(f"{path}: unknown config key(s) {unknown}; known: {sorted(known)}.")
    data.pop("comment", None)
    return TrainConfig(**data).validate()


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------
#: Loss terms and what each one asks of the fused image F (sources A, B; per image, then averaged).
LOSS_TERMS = {
    "intensity": "|F - max(A, B)|: keep the brighter source",
    "gradient": "| |grad F| - max(|grad A|, |grad B|) |: keep the stronger edge",
    "ssim": "2 - SSIM(F, A) - SSIM(F, B): structure of both sources",
    "contrast": "|L(F) - maxabs(L(A), L(B))| for band-pass L at 2 and 4 px: the more salient "
                "local contrast (a PET lesion against its surroundings)",
    "qabf": "1 - Q^AB/F: edge transfer (Xydeas-Petrovic)",
    "vif": "(2 - VIF(A, B, F)) / 2: visual information fidelity to both sources",
    "scd": "(2 - SCD) / 2: each source's contribution (sum of correlations of differences)",
    "sd": "relu(cap - SD(F) / SD(max(A, B))): contrast, up to cap x the pixel maximum's",
    "sf": "relu(cap - SF(F) / max(SF(A), SF(B))): sharpness, up to cap x the sharper source's "
          "(a decoder can win it with a pixel-shuffle checkerboard: not used by the shipped model)",
    "en": "relu(max(EN(A), EN(B)) + cap - EN(F)) / 8: information (soft-histogram entropy)",
    "functional": "the functional source's own local contrast (difference of Gaussians at 2 and "
                  "4 px, its resolution) kept in F, one-sided and in the same direction "
                  "(losses.functional_saliency); only on anatomical + functional pairs",
    "salient": "|F - T|, T following per pixel the source that stands further above its own "
               "foreground median (pair_losses.salient_intensity): uptake counts where the MR "
               "is brighter",
    "balance": "relu(FS(F) - FS(max(A, B))) with a soft-histogram FS: no less balanced in "
               "information than pixel maximum (pair_losses.information_balance)",
    "mi": "relu(1 - MI(F) / MI(max(A, B))) with soft-histogram MI = I(A;F) + I(B;F): up to "
          "pixel maximum's mutual information",
    "hot": "relu(y - F) at the pixels where a source y is clearly brighter than the other "
           "(a PET/SPECT hot focus over the MR), normalised by their area "
           "(pair_losses.hot_focus): the focus stays visible in the grey result",
    "identity": "|F - A| on pairs of a slice with itself: fusion of identical inputs is the input",
}
DEFAULT_LOSS = {"intensity": 1.0, "gradient": 2.0, "ssim": 1.0}
SD_CAP, SF_CAP, EN_MARGIN = 1.05, 1.4, 0.3


def fusion_loss(fused, a, b, *, weights: dict | None = None, caps: dict | None = None,
                functional=None):
    """Unsupervised fusion loss of a batch: a weighted sum of the terms of :data:`LOSS_TERMS`.

    Parameters
    ----------
    fused, a, b : Tensor
        ``(N, 1, H, W)``; sources in [0, 1]. Terms ``qabf`` and ``vif`` need ``H, W >= 48``.
    weights : dict, optional
        ``term -> weight``; default :data:`DEFAULT_LOSS` (``identity`` defaults to 1).
    caps : dict, optional
        Caps of the rewards: ``sd`` (ratio to SD(max(A, B)), default 1.05), ``sf`` (ratio to
        the sharper source's SF, default 1.4), ``en`` (bits above the richer source, default 0.3),
        ``hot`` (how much brighter than the other source a pixel must be to count as a hot
        focus, [0, 1] scale, default 0.15).
    functional : Tensor, optional
        ``(N,)`` integers: which source of each pair is functional (PET/SPECT): 0 = ``a``,
        1 = ``b``, -1 = none. The ``functional`` term scores only the pairs that have one.

    Returns
    -------
    total : Tensor
        Scalar loss. The terms score ``clip(F, 0, 1)`` (the image the user gets), plus a penalty
        ``mean(relu(F - 1) + relu(-F))`` on the raw output. Pairs with ``a == b`` (a slice with
        itself) are scored by the ``identity`` term only; the other pairs by every other term.
    terms : dict
        Float value of each weighted term (over the pairs it applies to).
    """

    w = dict(DEFAULT_LOSS if weights is None else weights)
    unknown = set(w) - set(LOSS_TERMS)
    if unknown:
        raise InvalidInputError(f"unknown loss term(s) {sorted(unknown)}; known: {sorted(LOSS_TERMS)}.")
    w.setdefault("identity", 1.0)
    cap = {"sd": SD_CAP, "sf": SF_CAP, "en": EN_MARGIN, "hot": PL.FOCUS_MARGIN}
    cap.update(caps or {})
    same = (a == b).flatten(1).all(1)
    # the terms score the image the user gets (clipped to [0, 1], as at inference); a range
    # penalty keeps the raw output inside, so unbounded terms (SD, SF) cannot be won by blowing up
    out_of_range = (F.relu(fused - 1.0) + F.relu(-fused)).mean(dim=(1, 2, 3))
    fused = fused.clamp(0.0, 1.0)
    per = {}
    if w.get("intensity"):
        per["intensity"] = (fused - torch.maximum(a, b)).abs().mean(dim=(1, 2, 3))
    if w.get("gradient"):
        ga, gb, gf = L.gradient_magnitude(a), L.gradient_magnitude(b), L.gradient_magnitude(fused)
        per["gradient"] = (gf - torch.maximum(ga, gb)).abs().mean(dim=(1, 2, 3))
    if w.get("ssim"):
        per["ssim"] = 2.0 - L.ssim(fused, a) - L.ssim(fused, b)
    if w.get("contrast"):
        per["contrast"] = L.contrast_fidelity(a, b, fused)
    if w.get("qabf"):
        per["qabf"] = 1.0 - L.qabf(a, b, fused)
    if w.get("vif"):
        per["vif"] = (2.0 - L.vif(a, b, fused)) / 2.0
    if w.get("scd"):
        per["scd"] = (2.0 - L.scd(a, b, fused)) / 2.0
    if w.get("functional") and functional is not None:
        role = functional.to(fused.device).long()
        func = torch.where((role == 1).view(-1, 1, 1, 1), b, a)
        per["functional"] = L.functional_saliency(func, fused) * (role >= 0).to(fused.dtype)
    if w.get("salient"):
        per["salient"] = PL.salient_intensity(a, b, fused)
    if w.get("hot"):
        per["hot"] = PL.hot_focus(a, b, fused, margin=cap["hot"])
    if w.get("balance") or w.get("mi"):
        balance, amount = PL.information_terms(a, b, fused)
        per.update({k: v for k, v in (("balance", balance), ("mi", amount)) if w.get(k)})
    # contrast, sharpness and entropy are rewarded only up to a cap set by the sources, so that
    # they cannot be won by noise (a checkerboard has the largest SF and SD of all)
    if w.get("sd"):
        ref = L.std(torch.maximum(a, b)).clamp_min(1.0)
        per["sd"] = F.relu(cap["sd"] - L.std(fused) / ref)
    if w.get("sf"):
        ref = torch.maximum(L.spatial_frequency(a), L.spatial_frequency(b)).clamp_min(1.0)
        per["sf"] = F.relu(cap["sf"] - L.spatial_frequency(fused) / ref)
    if w.get("en"):
        ref = torch.maximum(L.soft_entropy(a), L.soft_entropy(b))
        per["en"] = F.relu(ref + cap["en"] - L.soft_entropy(fused)) / 8.0
    per_pair = sum(w[k] * v for k, v in per.items()) if per else fused.new_zeros(fused.shape[0])
    ident = (fused - a).abs().mean(dim=(1, 2, 3))
    total_each = torch.where(same, w["identity"] * ident, per_pair) + out_of_range
    terms = {k: float(v[~same].mean().detach()) if bool((~same).any()) else 0.0
             for k, v in per.items()}
    terms["identity"] = float(ident[same].mean().detach()) if bool(same.any()) else 0.0
    return total_each.mean(), terms


# ---------------------------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What a training run produced."""

    path: Path
    sha256: str
    steps: int
    seconds: float
    first_loss: float
    final_loss: float
    history: list
    config: dict


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def train(config: TrainConfig, out: str | os.PathLike, *, init: str | os.PathLike | None = None,
          data: str | os.PathLike | None = None, bank: SliceBank | None = None,
          device: str = "cpu", threads: int | None = None, name: str | None = None,
          description: str = "", progress: ProgressCallback | None = None,
          validator=None) -> TrainResult:
    """Train (or fine-tune) a FusionNet and write it as a registered weights file.

    Parameters
    ----------
    config : TrainConfig
        Settings (see :class:`TrainConfig`).
    out : path
        Output ``.pt``; the file's SHA-256 is recorded in ``models.json`` next to it.
    init : str or path, optional
        Model to start from (registry name or registered ``.pt``; verified like any load).
    data : path, optional
        Fine-tuning folder (layout in the module docstring); default: the MNI training bank.
    bank : SliceBank, optional
        A ready bank (tests); overrides ``data``.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    threads : int, optional
        CPU threads for torch (default: leave torch's setting).
    progress : callable, optional
        ``progress(fraction, message)``.
    validator : callable, optional
        ``validator(net) -> (key, scores)`` (e.g. :class:`~MedFusionLib.training_atlas.AtlasValidator`),
        called every ``config.val_every`` steps and after the last; the checkpoint with the
        largest ``key`` is written (ties: the earlier one), and its step and ``scores`` are
        recorded in the file's meta and the registry entry.

    Returns
    -------
    TrainResult
    """


    config.validate()
    out = Path(out)
    if out.suffix != ".pt":
        raise InvalidInputError(f"{out}: the output weights file must end in .pt.")
    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(int(threads))
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)

    if init is not None:
        path, entry = model_entry(init)
        net = build_model(load_checkpoint(path, sha256=entry["sha256"]))
        init_desc = f"{entry['name']} ({entry['sha256'][:12]})"
        if config.residual and not net.residual:
            net = net.as_residual()
            init_desc += ", made residual"
    else:
        net = FusionNet(channels=tuple(config.channels), head_channels=config.head_channels,
                        residual=config.residual)
        init_desc = None
    net = net.to(dev).train()
    if bank is None:
        report(progress, 0.0, "building the training slices" + (
            f" from {data}" if data else " (MNI152 + synthetic PET/SPECT, anatomical + functional "
            "pairs)" if config.bank == "functional" else " (MNI152 + synthetic CT/PET)"))
        if data is not None:
            bank = folder_bank(data, patch=config.patch)
        elif config.bank == "functional":
            bank = functional_bank(exclude=tuple(config.holdout_z), seed=config.seed,
                                   n_volumes=config.functional_volumes)
        else:
            bank = mni_bank(exclude=tuple(config.holdout_z))
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    fixed_rules = [r for r in FEATURE_RULES if r != "learned"]

    history = []
    t0 = time.perf_counter()
    running = None
    first = None
    best = None  # (key, step, scores, state) of the best validated checkpoint
    validations = []  # every validation: step, key, scores (the frontier a run traced)
    for step in range(config.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, config)
        xa, xb, roles = bank.sample(config.batch_size, config.patch, rng,
                                    identity_prob=config.identity_prob, return_roles=True)
        a = torch.from_numpy(xa)[:, None].to(dev)
        b = torch.from_numpy(xb)[:, None].to(dev)
        rule = "learned"
        if config.rule_mix > 0 and rng.random() < config.rule_mix:
            rule = fixed_rules[int(rng.integers(len(fixed_rules)))]
        fused, _ = net(a, b, rule=rule)
        loss, terms = fusion_loss(fused, a, b, weights=config.loss, caps=config.caps,
                                  functional=torch.from_numpy(roles))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        opt.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise InvalidInputError(f"training diverged at step {step} (loss {value}); lower lr.")
        first = value if first is None else first
        running = value if running is None else 0.95 * running + 0.05 * value
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            history.append({"step": step + 1, "loss": round(running, 6),
                            **{k: round(v, 6) for k, v in terms.items()}})
            elapsed = time.perf_counter() - t0
            report(progress, (step + 1) / config.steps,
                   f"step {step + 1}/{config.steps}: loss {running:.4f} ("
                   + ", ".join(f"{k} {v:.4f}" for k, v in terms.items()) + f"), {elapsed:.0f} s")
        if validator is not None and config.val_every and (
                (step + 1) % config.val_every == 0 or step + 1 == config.steps):
            key, scores = validator(net.eval())
            net.train()
            validations.append({"step": step + 1, "key": list(key),
                                "scores": {k: round(v, 4) for k, v in scores.items()}})
            if best is None or key > best[0]:
                best = (key, step + 1, scores, copy.deepcopy(net.state_dict()))
            report(progress, (step + 1) / config.steps,
                   f"validation at step {step + 1}: key {key}, "
                   + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
                   + f"; best so far: step {best[1]}")
    seconds = time.perf_counter() - t0
    selected = None
    if best is not None:
        net.load_state_dict(best[3])
        selected = {"step": best[1], "key": list(best[0]),
                    "validation": {k: round(v, 4) for k, v in best[2].items()}}
    net = net.eval().to("cpu")
    meta = {"config": asdict(config), "init": init_desc, "data": str(data) if data else config.bank,
            "steps": config.steps, "seconds": round(seconds, 1), "final_loss": round(running, 6),
            "torch": str(torch.__version__), "selected": selected, "validations": validations}
    digest = save_checkpoint(net, out, meta=meta)
    register_model(out, name=name, sha256=digest, net=net, description=description,
                   extra={"training": {"steps": config.steps, "seed": config.seed,
                                       "data": meta["data"], "init": init_desc,
                                       "final_loss": meta["final_loss"],
                                       **({"selected": selected} if selected else {})}})
    report(progress, 1.0, f"wrote {out} (sha256 {digest[:12]}) after {seconds:.0f} s")
    return TrainResult(path=out, sha256=digest, steps=config.steps, seconds=seconds,
                       first_loss=first, final_loss=running, history=history,
                       config=asdict(config))
