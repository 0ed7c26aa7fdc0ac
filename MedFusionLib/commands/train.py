"""``medfusion train --config CONFIG.json --out models/NAME.pt``: train or fine-tune the CNN."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import aanlib, optional
from ..devices import DEVICES

NAME = "train"
HELP = "train the CNN fusion network (or fine-tune it on your own image pairs)"

training = optional.lazy("MedFusionLib.training", needs="torch", what="medfusion train")
training_atlas = optional.lazy("MedFusionLib.training_atlas", needs="torch", what="medfusion train")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="CONFIG.json", default=None,
                   help="training settings (JSON; see models/fusionnet-train.json); defaults if omitted")
    p.add_argument("--out", required=True, metavar="NAME.pt",
                   help="output weights; its SHA-256 is recorded in models.json in the same folder")
    p.add_argument("--init", metavar="MODEL", default=None,
                   help="start from this model (registry name or registered .pt): fine-tuning")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="your co-registered pairs: DIR/A/<name> and DIR/B/<name> (default: the "
                        "bundled MNI152 + synthetic CT/PET training slices); for a config with "
                        "a pair_type, the Harvard atlas folder of "
                        "Resources/SampleData/fetch-aanlib.sh")
    p.add_argument("--name", default=None, help="registry name (default: the file's stem)")
    p.add_argument("--steps", type=int, default=None, help="override the config's number of steps")
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")
    p.add_argument("--device", default="auto", help=f"compute device: {'|'.join(DEVICES)} (default auto)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--quiet", action="store_true", help="no progress messages")


def run(args) -> int:
    config = training.load_config(args.config)
    if args.steps is not None:
        config.steps = args.steps
    if args.seed is not None:
        config.seed = args.seed
    config.validate()

    def progress(fraction, message):
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    bank = validator = None
    data = args.data
    if config.pair_type:
        bank, validator, data = _atlas_data(config, args)
    result = training.train(config, args.out, init=args.init, data=data, bank=bank,
                            device=args.device,
                            threads=args.threads, name=args.name, progress=progress,
                            validator=validator)
    print(f"{result.path}\tsha256={result.sha256}\tsteps={result.steps}\t"
          f"loss {result.first_loss:.4f} -> {result.final_loss:.4f}\t{result.seconds:.0f} s")
    return 0


def _atlas_data(config, args):
    """Bank, validator and data record of a config that trains on the Harvard atlas pairs."""
    root = training_atlas.check_atlas_folder(args.data)
    split_path = aanlib.DEFAULT_SPLIT
    if config.split:
        split_path = Path(config.split)
        if not split_path.is_absolute() and args.config:
            split_path = Path(args.config).resolve().parent / split_path
    split = aanlib.read_split(split_path)
    bank = training_atlas.atlas_bank(root, config.pair_type, split)
    validator = None
    if config.val_every:
        validator = training_atlas.AtlasValidator(root, config.pair_type, split, reference=config.reference,
                                   limit=config.val_limit or None, guard=config.val_guard,
                                   hot=config.val_hot, per_case=config.val_per_case)
    data = (f"aanlib {config.pair_type} train cases {split['pair_types'][config.pair_type]['train']}"
            f" (commit {split.get('commit', '?')[:7]}, split {split_path.name})")
    return bank, validator, data
