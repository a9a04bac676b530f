#!/bin/sh
# Install platform-apply into a new venv from its repository at one commit: never a package
# index by name (a name anyone could register), and its dependencies only as hash-locked.
#
#   examples/ci/install.sh REPO_URL COMMIT_SHA VENV
#
# COMMIT_SHA is a full 40-hex commit (a tag can be moved). Prints the platform-apply path.
set -eu

if [ "$#" -ne 3 ]; then
  echo "usage: $0 REPO_URL COMMIT_SHA VENV" >&2
  exit 64
fi
repo=$1 ref=$2 venv=$3
if ! printf '%s' "$ref" | grep -Eqx '[0-9a-f]{40}'; then
  echo "$0: PLATFORM_APPLY_REF must be a full commit SHA (40 hex), not '$ref'" >&2
  exit 64
fi
src=$(mktemp -d)
git -C "$src" init -q
git -C "$src" fetch -q --depth 1 "$repo" "$ref"
git -C "$src" checkout -q --detach FETCH_HEAD
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --require-hashes -r "$src/requirements-runtime.lock"
"$venv/bin/pip" install --quiet --no-deps --no-build-isolation "$src"
echo "$venv/bin/platform-apply"
