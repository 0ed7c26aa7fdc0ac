#!/usr/bin/env bash
# Fetch the Harvard Whole Brain Atlas (AANLIB) fusion pairs as collected in the public repository
# xianming-gu/Havard-Medical-Image-Fusion-Datasets, pinned to one commit, and check every file
# against Resources/SampleData/aanlib-manifest.sha256 (file count and SHA-256 of each file).
#
#   fetch-aanlib.sh DEST [SOURCE]
#
# DEST    folder to create; or an existing checkout, which is moved to the pinned commit (never
#         over local changes) and checked.
# SOURCE  where to clone from: the GitHub URL (default; needs network), or an existing clone or
#         bare mirror of the repository on this machine (no network needed).
#
# The images carry no redistribution licence (research use): they are never part of MedFusion,
# CI and the tests never need them. Used by `medfusion train --data DEST` with the configs
# models/fusionnet-*-mr-train.json and by `python bench/eval_cnn.py --atlas DEST`.
# Exit status: 0 fetched/checked, 1 the files differ from the manifest, 2 bad usage or git error.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
url="https://github.com/xianming-gu/Havard-Medical-Image-Fusion-Datasets"
commit="${AANLIB_COMMIT:-984d169e8abd01baa130db3c5b9be3ba80191c1f}"
manifest="${AANLIB_MANIFEST:-$here/aanlib-manifest.sha256}"

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 DEST [SOURCE: URL, clone or bare mirror; default $url]" >&2
  exit 2
fi
dest="$1"
source="${2:-$url}"
command -v git >/dev/null || { echo "fetch-aanlib: git is needed" >&2; exit 2; }
if command -v sha256sum >/dev/null; then
  sha=(sha256sum)
elif command -v shasum >/dev/null; then
  sha=(shasum -a 256)
else
  echo "fetch-aanlib: sha256sum or shasum is needed" >&2
  exit 2
fi

if [ -e "$dest" ] && [ ! -d "$dest/.git" ]; then
  echo "fetch-aanlib: $dest exists and is not a git checkout; give a new folder" >&2
  exit 2
fi
fresh=0
if [ ! -d "$dest/.git" ]; then
  if ! git clone --quiet --no-checkout "$source" "$dest"; then
    echo "fetch-aanlib: cannot clone $source" >&2
    exit 2
  fi
  fresh=1
fi
# an existing checkout is moved to the commit only if git can do so without touching local
# changes; local changes are then reported by the check below, never overwritten
if [ "$fresh" = 1 ] || [ "$(git -C "$dest" rev-parse --verify --quiet HEAD || true)" != "$commit" ]; then
  git -C "$dest" cat-file -e "$commit^{commit}" 2>/dev/null ||
    git -C "$dest" fetch --quiet origin "$commit" 2>/dev/null || true
  if ! git -C "$dest" -c advice.detachedHead=false checkout --quiet "$commit"; then
    echo "fetch-aanlib: cannot check out $commit in $dest (not in $source, or local changes)" >&2
    exit 2
  fi
fi

want=$(grep -c . "$manifest")
have=$(git -C "$dest" ls-files | wc -l | tr -d ' ')
extra=$(cd "$dest" && git ls-files --others --exclude-standard | wc -l | tr -d ' ')
if [ "$have" != "$want" ] || [ "$extra" != 0 ]; then
  echo "fetch-aanlib: $dest holds $have tracked and $extra untracked files; the manifest lists $want" >&2
  exit 1
fi
checked=$(cd "$dest" && "${sha[@]}" -c "$manifest" 2>&1 || true)
bad=$(printf '%s\n' "$checked" | grep -v ': OK$' || true)
if [ -n "$bad" ]; then
  echo "fetch-aanlib: files of $dest differ from $manifest:" >&2
  echo "$bad" | head -20 >&2
  exit 1
fi
echo "fetch-aanlib: $dest is $url at ${commit:0:12}, $want files checked (SHA-256)"
