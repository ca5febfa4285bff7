#!/usr/bin/env bash
# Regenerates the Python stubs and the TypeScript messages from protos/.
# Usage: scripts/gen.sh [OUT_DIR]
#   without OUT_DIR: into clients/python and clients/typescript/src/gen;
#   with OUT_DIR: into OUT_DIR/python and OUT_DIR/typescript (make check-gen compares them).
set -euo pipefail
cd "$(dirname "$0")/.."
python_out=clients/python
typescript_out=clients/typescript/src/gen
if [ $# -gt 0 ]; then
  python_out="$1/python"
  typescript_out="$1/typescript"
fi
gen_dirs=(api identity room history file gateway)
for d in "${gen_dirs[@]}"; do rm -rf "${python_out:?}/parley/$d"; done
mkdir -p "$python_out"
templates=()
trap 'rm -f "${templates[@]}"' EXIT
with_output() {  # a copy of template $1 writing to $3 instead of $2
  local template
  template="$(mktemp --suffix=.yaml)"
  templates+=("$template")
  sed "s#out: $2\$#out: $3#" "$1" > "$template"
  echo "$template"
}
node_modules/.bin/buf generate --template "$(with_output buf.gen.yaml clients/python "$python_out")"
node_modules/.bin/buf generate --template "$(with_output buf.gen.ts.yaml clients/typescript/src/gen "$typescript_out")"
# Generated modules live in packages so that setuptools and mypy find them.
find "$python_out/parley" -mindepth 1 -type d \( -path "*/v1" -o -false \) | while read -r v; do
  touch "$v/__init__.py" "$(dirname "$v")/__init__.py"
done
