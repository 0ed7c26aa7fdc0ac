"""Dask worker preload for the cohort tests (``dask worker --preload Testing/dask_preload.py``).

Registers two methods that exist only on the test workers: ``test-slow`` (the pixel average
after a pause, so a test can kill a worker in the middle of a row) and ``test-crash`` (takes its
worker process down, like a segfault or the kernel's out-of-memory killer would). And counts, in
``weights.build_model.calls``, how often the worker builds a CNN from its weights file, so a test
can check that a worker loads a model once, not once per row.
"""

from __future__ import annotations

import os
import time

import numpy as np

from MedFusionLib.methods import METHODS, register
from MedFusionLib.nets import weights


def slow_average(a: np.ndarray, b: np.ndarray, *, pause: float = 1.0, device: str = "cpu"):
    time.sleep(pause)
    return ((a + b) * np.float32(0.5)).astype(np.float32)


def crash(a: np.ndarray, b: np.ndarray, *, device: str = "cpu"):
    os._exit(13)


# dask imports a preload file once to check it and again to run it: register once
if "test-slow" not in METHODS:
    register("test-slow", title="average after a pause (tests only)")(slow_average)
    register("test-crash", title="kills its process (tests only)")(crash)


def _counting(build):
    def build_model(ckpt):
        build_model.calls += 1
        return build(ckpt)

    build_model.calls = 0
    return build_model


if not hasattr(weights.build_model, "calls"):
    weights.build_model = _counting(weights.build_model)
