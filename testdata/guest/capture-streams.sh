#!/bin/bash
# capture-streams.sh [OUTDIR] [FLAGS...] - capture real QEMU 7.2 migration streams of the
# test guest into OUTDIR (default $DWCP_STREAMS, else /tmp/dwcp-streams):
#   single.bin  one-pass stream after the workload ran a while
#   later.bin   the same guest some seconds later (delta against an earlier migration)
#   live.bin    multi-pass live stream (bandwidth limited, >= 5 dirty-bitmap syncs)
#   summary.json / summary.md
# Cached: nothing is captured when OUTDIR/summary.json matches the current guest build,
# the flags and the files. FLAGS go to the Go tool (see -help), e.g. -force, -mem 512.
# The guest is built (or reused) by build-guest.sh in the shared cache first.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${1:-${DWCP_STREAMS:-/tmp/dwcp-streams}}
[ $# -gt 0 ] && shift
cd "$ROOT"
exec go run ./host/internal/testguest/cmd/capture-streams -out "$OUT" "$@"
