#!/bin/sh
# Build the Go example offline from Debian bookworm's packages (.ci/run lists them): Go, grpc-go
# and protobuf-go as source in /usr/share/gocode, protoc-gen-go and protoc-gen-go-grpc, protoc.
# Usage: ./build.sh DIR   writes DIR/scout-example; stubs, GOPATH and the Go cache stay in DIR.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
# GOPATH mode, Debian's Go sources in /usr/share/gocode: no module proxy to reach.
export GO111MODULE=off GOFLAGS= GOPROXY=off GOPATH="$out/gopath:/usr/share/gocode" GOCACHE="$out/cache"
# The proto has no go_package, so M names its Go import path; google/rpc/status.proto's own
# go_package is genproto's status package, which grpc-go uses (and Debian ships) already.
mkdir -p "$out/gopath/src"
protoc -I "$here/../../protos" -I /usr/include \
    --go_out="$out/gopath/src" --go_opt=Mscout/v1/exec.proto="scout/v1;scoutv1" \
    --go-grpc_out="$out/gopath/src" --go-grpc_opt=Mscout/v1/exec.proto="scout/v1;scoutv1" \
    scout/v1/exec.proto
go build -o "$out/scout-example" "$here/client.go"
