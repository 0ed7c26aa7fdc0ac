"""Synthetic test data for the MedFusion module's self-test and the bridge's tests (no downloads).

:func:`synthetic_head_pair` builds a head-like MR and CT with a known rigid misalignment as voxel
arrays and IJK->RAS matrices, ready for ``slicer.util.addVolumeFromArray``; Slicer's factory
machines run the self-test on it offline. :func:`mutual_information` scores an alignment.
"""

from __future__ import annotations

import numpy as np

__all__ = ["synthetic_head_pair", "mutual_information"]


def synthetic_head_pair(shape=(48, 56, 52), spacing=(2.0, 1.8, 1.6), shift_mm=(4.0, -3.0, 2.5),
                        rotation_deg=6.0):
    """Synthetic head-like MR and CT arrays with a known rigid misalignment (no downloads).

    Returns ``(mr_array, ct_array, mr_ijk_to_ras, ct_ijk_to_ras, ct_to_mr)``: ``(k, j, i)``
    arrays (MR float32, CT int16 in HU), their 4x4 IJK->RAS matrices (the MR one oblique), and the
    4x4 RAS matrix (mm) that maps a point of the CT's content onto the same anatomy in the MR,
    i.e. the transform that aligns the CT on the MR.
    """
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    sx, sy, sz = spacing[0], spacing[1], spacing[2]
    mr_ijk_to_ras = np.eye(4)
    angle = np.deg2rad(8.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    mr_ijk_to_ras[:3, :3] = rot @ np.diag([sx, sy, sz])
    center = np.array([(shape[2] - 1) * sx, (shape[1] - 1) * sy, (shape[0] - 1) * sz]) / 2
    mr_ijk_to_ras[:3, 3] = -rot @ center

    # anatomy in RAS mm, relative to the head centre
    def anatomy(ras):
        x, y, z = ras
        r = np.sqrt((x / 38) ** 2 + (y / 46) ** 2 + (z / 34) ** 2)
        brain = r < 0.86
        skull = (r >= 0.86) & (r < 1.0)
        ventricles = ((x - 6) / 7) ** 2 + (y / 14) ** 2 + ((z - 4) / 8) ** 2 < 1
        lesion = ((x + 14) / 6) ** 2 + ((y - 12) / 6) ** 2 + ((z + 6) / 6) ** 2 < 1
        grey = brain & (np.sin(x / 5) * np.cos(y / 6) > 0.3)
        return brain, skull, ventricles, lesion, grey

    def ras_of_voxels(ijk_to_ras):
        ijk = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
        return (ijk_to_ras @ ijk)[:3].reshape(3, *shape)

    brain, skull, ventricles, lesion, grey = anatomy(ras_of_voxels(mr_ijk_to_ras))
    mr = np.zeros(shape, np.float32)
    mr[brain] = 420
    mr[grey] = 300
    mr[ventricles] = 120
    mr[lesion] = 560
    mr[skull] = 60
    mr += np.random.default_rng(0).normal(0, 8, shape).astype(np.float32)

    # The CT's content is the anatomy moved by ct_to_mr^-1: a CT voxel at RAS p shows the anatomy at
    # ct_to_mr @ p.
    a = np.deg2rad(rotation_deg)
    ct_to_mr = np.eye(4)
    ct_to_mr[:3, :3] = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ct_to_mr[:3, 3] = shift_mm
    ct_ijk_to_ras = np.eye(4)
    ct_ijk_to_ras[:3, :3] = np.diag([-sx, -sy, sz])
    ct_ijk_to_ras[:3, 3] = center * np.array([1, 1, -1])
    brain, skull, ventricles, lesion, grey = anatomy(
        (ct_to_mr @ np.vstack([ras_of_voxels(ct_ijk_to_ras).reshape(3, -1), np.ones((1, i.size))]))[:3].reshape(3, *shape))
    ct = np.full(shape, -1000.0, np.float32)
    ct[brain] = 35
    ct[ventricles] = 5
    ct[lesion] = 70
    ct[skull] = 1200
    ct += np.random.default_rng(1).normal(0, 5, shape).astype(np.float32)
    return mr, ct.astype(np.int16), mr_ijk_to_ras, ct_ijk_to_ras, ct_to_mr


def mutual_information(a, b, bins: int = 32) -> float:
    """Mutual information (nats) of two arrays' joint intensity histogram, voxel by voxel."""
    joint, _x_edges, _y_edges = np.histogram2d(np.ravel(a), np.ravel(b), bins=bins)
    joint /= joint.sum()
    pa, pb = joint.sum(axis=1, keepdims=True), joint.sum(axis=0, keepdims=True)
    nonzero = joint > 0
    return float(np.sum(joint[nonzero] * np.log(joint[nonzero] / (pa @ pb)[nonzero])))
