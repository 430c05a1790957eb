#!/usr/bin/env bash
# Builds the Node client: node and npm from Debian when missing, the pinned npm
# packages (package-lock.json) into node_modules/, TypeScript stubs generated from
# protos/ into gen/, and the compiled client into dist/. Idempotent: a second run
# only regenerates and recompiles (a few seconds).
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# npm ci starts from an empty node_modules, so run it only when the lock file changed
# since the last install. No package needs its install script (buf's binary comes as
# an npm package of its platform), hence --ignore-scripts.
stamp=node_modules/.ofp-installed-lock
if [[ ! -f package-lock.json ]]; then
  npm install --ignore-scripts --no-audit --no-fund
  cp package-lock.json "$stamp"
elif ! cmp -s package-lock.json "$stamp"; then
  npm ci --ignore-scripts --no-audit --no-fund
  cp package-lock.json "$stamp"
fi

node_modules/.bin/buf generate        # buf.gen.yaml: protos/ + google/rpc -> gen/
node_modules/.bin/tsc -p .            # src/ + gen/ -> dist/
