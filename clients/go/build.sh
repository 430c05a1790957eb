#!/usr/bin/env bash
# Build the Go example (build/ofp-example) from Debian 12 packages only.
#
# The stubs come from the repository's buf.gen.yaml, run whole (Go, Java and C#) with
# --output build/buf, so the one template every language shares is what this build and its
# test exercise, and the Go build never writes into another client's directory.
#
# The Go libraries are Debian's (grpc 1.33, protobuf 1.28, genproto), which Debian ships as
# GOPATH source trees under /usr/share/gocode; the Go module proxy is not reachable from
# every machine that builds this repository. So the build runs in GOPATH mode with the
# generated ofpv1 package on GOPATH, the way Debian builds its own Go packages.
# Idempotent: installs only missing packages, regenerates and relinks only when an input
# is newer than the binary.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="$here/build/ofp-example"

# golang-github-golang-protobuf-1-5-dev: grpc's dependency is "1-3 | 1-5"; 1.3 predates
# the protobuf APIv2 runtime the generated code and genproto's errdetails need.
# protobuf-compiler and grpc_java_plugin: buf.gen.yaml's Java and C# plugins.
packages=(
  golang-go golang-google-grpc-dev golang-google-protobuf-dev golang-google-genproto-dev
  golang-github-golang-protobuf-1-5-dev protoc-gen-go protoc-gen-go-grpc
  protobuf-compiler protobuf-compiler-grpc-java-plugin
)
missing=()
for p in "${packages[@]}"; do
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" == installed ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) == 0 ]] || sudo=sudo
  $sudo apt-get update
  # Other clients' builds may be installing at the same time: wait for dpkg's lock.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends \
    -o DPkg::Lock::Timeout=600 "${missing[@]}"
fi

buf="${BUF:-$repo/.venv/bin/buf}"
[[ -x "$buf" ]] || buf="$(command -v buf)" || {
  echo "buf not found (pip install -e '.[dev]' at the repository root installs it)" >&2
  exit 1
}

inputs=("$repo/protos" "$repo/buf.gen.yaml" "$here/build.sh" "$here/cmd")
if [[ -x "$bin" ]] && [[ -z "$(find "${inputs[@]}" -newer "$bin" 2>/dev/null)" ]]; then
  exit 0 # up to date
fi

# A fresh staging directory, moved into place whole: a failed run leaves no half tree.
mkdir -p "$here/build"
stage="$(mktemp -d "$here/build/.buf.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
(cd "$repo" && "$buf" generate --template buf.gen.yaml --output "$stage")
rm -rf "$here/build/buf"
mv "$stage" "$here/build/buf"

# buf.gen.yaml writes the Go stubs as a GOPATH tree (gen/src/<import path>).
cd "$here"
GO111MODULE=off GOPATH="$here/build/buf/clients/go/gen:/usr/share/gocode" \
  go build -o "$bin" ./cmd/ofp-example
echo "built $bin"
