"""Speed of the CNN fusion method: slices/s, a whole volume through the driver, peak memory.

Prints, for the default model on each available device:

- slices/s of the ``cnn`` method at 256 x 256 and 512 x 512 (batches of the driver's size);
- the time to fuse a 256 x 256 x 180 volume through :func:`MedFusionLib.driver.fuse_arrays`
  (registration and normalisation excluded), and the peak resident memory of the process
  (memory is bounded by the batch size, not by the volume);
- the same on CUDA (float16) when a GPU is present.

Targets (issue #3) on the 2-core CPU: >= 50 slices/s at 256 x 256 and the volume in < 5 s.

Usage::

    python bench/bench_cnn.py [--threads N] [--seconds S] [--rule R] [--level L]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MedFusionLib.devices import cuda_available  # noqa: E402
from MedFusionLib.driver import batch_size_for, fuse_arrays  # noqa: E402
from MedFusionLib.methods import get_method  # noqa: E402


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _slices(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Head-like test slices: smooth blobs with edges, in [0, 1]."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.random((n, size, size), dtype=np.float32), (0, 4, 4))
    a = np.clip((base - base.min()) / (np.ptp(base) + 1e-6), 0, 1).astype(np.float32)
    b = np.clip(1.0 - a + 0.05 * rng.standard_normal(a.shape).astype(np.float32), 0, 1)
    return a, b.astype(np.float32)


def slices_per_second(size: int, device: str, seconds: float, params: dict) -> float:
    info = get_method("cnn")
    bs = batch_size_for(info.slices_per_batch, size, size)
    a, b = _slices(bs, size)
    info.func(a, b, device=device, **params)  # warm-up: model load, kernel selection
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        info.func(a, b, device=device, **params)
        n += bs
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def volume_seconds(device: str, params: dict, shape=(180, 256, 256)) -> float:
    a, b = _slices(shape[0], shape[1], seed=1)
    fuse_arrays(a[:2], b[:2], method="cnn", device=device, **params)  # warm-up
    t0 = time.perf_counter()
    out = fuse_arrays(a, b, method="cnn", device=device, axis=0, **params)
    dt = time.perf_counter() - t0
    assert out.shape == a.shape
    return dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing window per figure")
    ap.add_argument("--rule", default="learned")
    ap.add_argument("--level", default="feature")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    params = {"rule": args.rule, "level": args.level}
    devices = ["cpu"] + (["cuda"] if cuda_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"rule={args.rule}, level={args.level}")
    for dev in devices:
        name = torch.cuda.get_device_name(0) if dev == "cuda" else "CPU"
        for size in (256, 512):
            sps = slices_per_second(size, dev, args.seconds, params)
            print(f"{dev:4s} ({name}): {size}x{size}: {sps:7.1f} slices/s")
        rss0 = _peak_rss_mb()
        secs = volume_seconds(dev, params)
        print(f"{dev:4s} ({name}): 256x256x180 volume through fuse_arrays: {secs:.2f} s "
              f"({180 / secs:.0f} slices/s); peak RSS {_peak_rss_mb():.0f} MB "
              f"(before the volume: {rss0:.0f} MB; the two inputs and the output alone are "
              f"{3 * 180 * 256 * 256 * 4 / 2 ** 20:.0f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
