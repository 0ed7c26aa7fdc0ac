#!/usr/bin/env bash
# Fetch the ITK example MR slices (BrainWeb-simulated T1 and proton density, with shifted and
# rotated copies; Apache-2.0) from Debian's insighttoolkit5-examples package into .data/itk/.
# Used by the registration tests (known transforms) and as real 2D sample data.
# Idempotent; needs apt-get (the Debian package registry), never run at test time.
set -euo pipefail
dest="${MEDFUSION_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/.data}/itk"
[ -f "$dest/BrainT1Slice.png" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
if ! apt-get download insighttoolkit5-examples >/dev/null 2>&1; then
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get download insighttoolkit5-examples >/dev/null
fi
dpkg -x insighttoolkit5-examples_*.deb root
mkdir -p "$dest"
cp root/usr/share/doc/insighttoolkit5-examples/examples/Data/Brain*Slice*.png "$dest/"
cp root/usr/share/doc/insighttoolkit5-examples/copyright "$dest/COPYRIGHT.insighttoolkit5-examples" 2>/dev/null \
  || cp root/usr/share/doc/insighttoolkit5-examples/../insighttoolkit5-examples/copyright "$dest/" 2>/dev/null || true
echo "fetched ITK example slices into $dest"
