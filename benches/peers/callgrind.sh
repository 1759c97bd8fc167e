#!/usr/bin/env bash
# Instructions per committed entry, counted by callgrind over the timed section only.
#
#   benches/peers/callgrind.sh [LIB NODES WINDOW PAYLOAD COUNT [KNOB=VALUE ...]]
#
# Defaults to synod's 3-replica, B=1000, 64-byte case. Builds the release binary, runs it under
# `valgrind --tool=callgrind` with collection switched on only inside `measured_section` (the
# timed run; warm-up, leader election and the digest check are not counted), prints the total,
# the figure per committed entry, and the top functions by inclusive and by self cost.
set -euo pipefail
cd "$(dirname "$0")"
args=("$@")
if [ ${#args[@]} -eq 0 ]; then args=(synod 3 1000 64 50000 compact_every=10000); fi
count=${args[4]}
cargo build --release --quiet
out=$(mktemp -d)/callgrind.out
valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured_section*' \
  --callgrind-out-file="$out" target/release/synod-peers one "${args[@]}" 2>"$out.log" | grep RESULT
total=$(grep -o 'Collected : [0-9]*' "$out.log" | grep -o '[0-9]*$')
echo "instructions in the timed section: $total"
echo "instructions per committed entry:  $((total / count))"
clean() { sed 's|/rustc/[0-9a-f]*/||; s|/root/.cargo/registry/src/index.crates.io-[0-9a-f]*/||; s| \[[^]]*\]$||' | cut -c1-180; }
echo; echo "top functions, inclusive (whole functions only):"
callgrind_annotate --inclusive=yes "$out" 2>/dev/null | sed -n '/file:function/,$p' | grep ' \[' \
  | grep -v 'libc-start\|lang_start\|backtrace\|(below main)\|???:main\|0x0000\|synod_peers::main\|harness::drive\|measured_section' \
  | head -25 | clean
echo; echo "top functions, self cost:"
callgrind_annotate "$out" 2>/dev/null | sed -n '/file:function/,$p' | sed -n 3,22p | clean
echo; echo "profile: $out (callgrind_annotate --inclusive=yes $out)"
