"""``medfusion list-methods``: the registered fusion methods and what they can do."""

from __future__ import annotations

import argparse
import json

from ..methods import default_method, list_methods

NAME = "list-methods"
HELP = "list the fusion methods, their parameters and capabilities"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args) -> int:
    infos = list_methods(details=True)
    default = default_method()
    if args.json:
        print(json.dumps({n: {"title": i.title, "family": i.family, "reference": i.reference,
                              "available": i.available, "cuda": i.supports_cuda,
                              "weights_map": i.provides_weights, "default": n == default,
                              "params": {k: v for k, v in i.params.items()}}
                          for n, i in infos.items()}, indent=2, default=str))
        return 0
    for name, info in infos.items():
        flags = [f for f, on in (("default", name == default), ("cuda", info.supports_cuda),
                                 ("weights", info.provides_weights),
                                 ("UNAVAILABLE: needs torch", not info.available)) if on]
        params = ", ".join(f"{k}={v!r}" for k, v in info.params.items()) or "-"
        print(f"{name:10s} {info.title}" + (f"  [{', '.join(flags)}]" if flags else ""))
        print(f"{'':10s} family: {info.family}; parameters: {params}")
    return 0
