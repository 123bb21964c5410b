#!/bin/sh
# Generate the manual page hwntpd(8) from the clap definitions.
#   scripts/man.sh [OUT]        (default: target/hwntpd.8)
# Install it with: install -Dm644 target/hwntpd.8 /usr/local/share/man/man8/hwntpd.8
set -eu
cd "$(dirname "$0")/.."
out=${1:-target/hwntpd.8}
cargo run --quiet --release --bin hwntpd-mangen > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"
