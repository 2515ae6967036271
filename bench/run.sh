#!/usr/bin/env bash
# make bench: builds superd, the baseline server, superbench and the matrix
# runner, then runs the matrix (superd vs baseline, loopback only, under 10
# minutes) and writes bench/results.md. Extra arguments go to the matrix,
# e.g. bench/run.sh -cells E1,CHAT -runs 5.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
VERSION=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
mkdir -p bin
$GO build -ldflags "-X main.version=$VERSION" -o bin/superd ./cmd/superd
$GO build -o bin/baseline ./bench/baseline
$GO build -o bin/superbench ./cmd/superbench
$GO build -o bin/benchmatrix ./bench/matrix
exec bin/benchmatrix -superd bin/superd -baseline bin/baseline -superbench bin/superbench -out bench/results.md "$@"
