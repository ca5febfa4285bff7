#!/usr/bin/env bash
# Regenerates the Python stubs from protos/ into the client package.
# Usage: scripts/gen.sh [OUT_DIR]   (default: clients/python)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-clients/python}"
gen_dirs=(api identity room history file gateway)
for d in "${gen_dirs[@]}"; do rm -rf "$out/parley/$d"; done
mkdir -p "$out"
if [ "$out" = clients/python ]; then
  node_modules/.bin/buf generate
else
  template="$(mktemp --suffix=.yaml)"
  trap 'rm -f "$template"' EXIT
  sed "s#out: clients/python#out: $out#" buf.gen.yaml > "$template"
  node_modules/.bin/buf generate --template "$template"
fi
# Generated modules live in packages so that setuptools and mypy find them.
find "$out/parley" -mindepth 1 -type d \( -path "*/v1" -o -false \) | while read -r v; do
  touch "$v/__init__.py" "$(dirname "$v")/__init__.py"
done
