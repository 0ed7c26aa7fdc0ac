#!/usr/bin/env bash
# Fetch dicom3tools (dciodvfy, the DICOM validator the DICOM tests run) from Debian's package
# registry into .data/tools/bin, without root: the .deb is unpacked, not installed.
# Idempotent; never run at test time (Testing/conftest.py puts .data/tools/bin on PATH).
set -euo pipefail
root="${MEDFUSION_DATA:-$(cd "$(dirname "$0")/.." && pwd)/.data}/tools"
command -v dciodvfy >/dev/null 2>&1 && exit 0
[ -x "$root/bin/dciodvfy" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
if ! apt-get download dicom3tools >/dev/null 2>&1; then
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get download dicom3tools >/dev/null
fi
dpkg -x dicom3tools_*.deb pkg
mkdir -p "$root/bin"
cp pkg/usr/bin/dciodvfy pkg/usr/bin/dcdump "$root/bin/"
echo "fetched dicom3tools into $root/bin"
