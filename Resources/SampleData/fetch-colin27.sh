#!/usr/bin/env bash
# Fetch the Colin27 single-subject T1 (ch2bet.nii.gz: brain-extracted, 1 mm; "ch2" = Colin
# Holmes, 27 averaged scans; BSD-3 as shipped by MRIcron) from Debian's mricron-data package into
# .data/mricron/. Colin27 is a different subject from the MNI152 average the CNN is trained on:
# bench/eval_cnn.py and the CNN tests use it as held-out anatomy for the synthetic MR-PET and
# MR-SPECT validation pairs. Idempotent; needs apt-get (the Debian package registry), never run at
# test time.
set -euo pipefail
dest="${MEDFUSION_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/.data}/mricron"
[ -f "$dest/ch2bet.nii.gz" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
if ! apt-get download mricron-data >/dev/null 2>&1; then
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get download mricron-data >/dev/null
fi
dpkg -x mricron-data_*.deb root
mkdir -p "$dest"
cp root/usr/share/mricron/templates/ch2bet.nii.gz "$dest/"
cp root/usr/share/doc/mricron-data/copyright "$dest/COPYRIGHT.mricron-data" 2>/dev/null || true
echo "fetched Colin27 (ch2bet.nii.gz) into $dest"
