#!/usr/bin/env bash
# Regenerates the Go code for proto/ with pinned generators. The generated
# files are checked in; CI runs this and fails on any difference.
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOC_WANT="libprotoc 3.21.12"        # Debian 12 protobuf-compiler
PROTOC_GEN_GO=v1.36.12                  # google.golang.org/protobuf
PROTOC_GEN_GO_GRPC=v1.6.2               # google.golang.org/grpc/cmd/protoc-gen-go-grpc

have=$(protoc --version 2>/dev/null || true)
if [ "$have" != "$PROTOC_WANT" ]; then
  echo "protoc: want '$PROTOC_WANT' (apt-get install protobuf-compiler), have '${have:-none}'" >&2
  exit 1
fi

bin="$PWD/.tools/bin"
mkdir -p "$bin"
GOBIN="$bin" GOWORK=off go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO"
GOBIN="$bin" GOWORK=off go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC"

# Each .proto names its Go package; files for the SDK module generate into
# sdk/ (module github.com/dwcp/dwcp/sdk), the rest into the root module.
rm -rf sdk/internal/pb host/internal/pb
for dir in $(find proto -name '*.proto' -printf '%h\n' | sort -u); do
  first=$(ls "$dir"/*.proto | head -1)
  if grep -q 'go_package = "github.com/dwcp/dwcp/sdk/' "$first"; then
    out=sdk module=github.com/dwcp/dwcp/sdk
  else
    out=. module=github.com/dwcp/dwcp
  fi
  PATH="$bin:$PATH" protoc -I proto \
    --go_out="$out" --go_opt=module="$module" \
    --go-grpc_out="$out" --go-grpc_opt=module="$module" \
    "$dir"/*.proto
done
