#!/usr/bin/env bash
# Build the Java example from Debian 12 packages only (no Maven or Gradle download):
# protoc + grpc_java_plugin generate the stubs from protos/ into gen/, javac compiles them
# with src/ against the jars in /usr/share/java, and build/ofp-example.jar names those jars
# in its manifest, so `java -jar build/ofp-example.jar HOST:PORT REQUEST.json` runs it.
# Idempotent: installs only missing packages, rebuilds only when an input is newer.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
jar="$here/build/ofp-example.jar"

packages=(
  protobuf-compiler libprotobuf-dev protobuf-compiler-grpc-java-plugin
  libprotobuf-java libgrpc-java libgoogle-common-protos-java
  libnetty-java libguava-java libgoogle-gson-java libperfmark-java
  libgeronimo-annotation-1.3-spec-java
)
missing=()
command -v javac >/dev/null || missing+=(default-jdk-headless)
for p in "${packages[@]}"; do
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" == installed ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) == 0 ]] || sudo=sudo
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi

# Debian 12's proto-google-common-protos (1.16) predates google.rpc.ErrorInfo, so
# error_details.proto is compiled here too, from googleapis-common-protos (pinned in the
# project's pyproject.toml). Those classes sit inside the jar, ahead of the Debian jar
# on the class path, and keep their upstream names (com.google.rpc.ErrorInfo).
python="${PYTHON:-$repo/.venv/bin/python}"
[[ -x "$python" ]] || python=python3
rpc_protos="$("$python" -c 'import google.rpc, os; print(os.path.dirname(os.path.dirname(google.rpc.__path__[0])))')"
[[ -f "$rpc_protos/google/rpc/error_details.proto" ]] || {
  echo "google/rpc/error_details.proto not found (pip install googleapis-common-protos)" >&2
  exit 1
}

inputs=("$repo/protos/ofp/v1/feature_service.proto" "$rpc_protos/google/rpc/error_details.proto"
        "$here/build.sh" "$here"/src/dev/ofp/example/*.java)
if [[ -f "$jar" ]] && [[ -z "$(find "${inputs[@]}" -newer "$jar" 2>/dev/null)" ]]; then
  exit 0 # up to date
fi

rm -rf "$here/gen" "$here/build"
mkdir -p "$here/gen" "$here/build/classes"
protoc -I"$repo/protos" -I"$rpc_protos" -I/usr/include \
  --plugin=protoc-gen-grpc-java=/usr/bin/grpc_java_plugin \
  --java_out="$here/gen" --grpc-java_out="$here/gen" \
  ofp/v1/feature_service.proto google/rpc/error_details.proto

# Compile-time jars (the stubs' @javax.annotation.Generated comes from geronimo's); the rest
# are what grpc-netty needs at run time.
compile=(protobuf protobuf-util proto-google-common-protos grpc-api grpc-stub grpc-protobuf
         grpc-protobuf-lite guava gson)
runtime=(grpc-context grpc-core grpc-netty perfmark-api netty-buffer netty-codec
         netty-codec-http netty-codec-http2 netty-codec-socks netty-common netty-handler
         netty-handler-proxy netty-resolver netty-transport netty-transport-native-unix-common)
cp=""
for j in "${compile[@]}" geronimo-annotation-1.3-spec; do cp+="/usr/share/java/$j.jar:"; done
find "$here/gen" "$here/src" -name '*.java' > "$here/build/sources.txt"
javac -nowarn -encoding UTF-8 --release 17 -d "$here/build/classes" -cp "$cp" @"$here/build/sources.txt"

manifest="$here/build/MANIFEST.MF"
{
  echo "Main-Class: dev.ofp.example.Example"
  # Manifest lines are at most 72 bytes: one jar per continuation line (a leading
  # space continues the line, the second one separates the entries).
  echo "Class-Path: /usr/share/java/protobuf.jar"
  for j in "${compile[@]:1}" "${runtime[@]}"; do echo "  /usr/share/java/$j.jar"; done
} > "$manifest"
jar --create --file "$jar" --manifest "$manifest" -C "$here/build/classes" .
echo "built $jar"
