#!/usr/bin/env bash
# The two commands of the README's quick start, on a fresh machine:
#   bash infra/dev.sh demo    installs callpipe, starts the local Kafka, runs `callpipe demo`
#   bash infra/dev.sh test    installs callpipe, starts a test broker, runs the whole test suite
# Both install what they need (a virtualenv in .venv, Apache Kafka jars via Maven into .cache/)
# and stop the broker they started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  # The native decoder (pipeline/native/) is built by the install with cargo, from rustup's
  # place when a non-login shell has not put it on PATH.
  if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH=$HOME/.cargo/bin:$PATH
  fi
  local stamp=$VENV/.installed
  # Reinstall when pyproject.toml or the decoder's sources changed since, or cargo is here and the
  # decoder is not: the editable install builds pipeline/_native*.so into the tree, so an edit to
  # the Rust code is built here.
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
    || [ -n "$(find pipeline/native/Cargo.toml pipeline/native/Cargo.lock pipeline/native/src \
      -newer "$stamp" -print -quit)" ] \
    || { command -v cargo >/dev/null 2>&1 && ! compgen -G 'pipeline/_native*.so' >/dev/null; }; then
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet -e '.[dev]'
    touch "$stamp"
  fi
  export PATH=$VENV/bin:$PATH
}

need_chromium() {
  # The report test renders the HTML report in headless Chromium (Debian's package).
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      echo "chromium is missing and this is not root: install Debian's chromium package" >&2
    fi
  fi
}

need_kcat() {
  # The carrier test produces with kcat (Debian's package), as docs/ARCHITECTURE.md tells carriers to.
  if ! command -v kcat >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat >/dev/null
    else
      echo "kcat is missing and this is not root: install Debian's kcat package" >&2
    fi
  fi
}

case "${1:-}" in
  demo)
    setup
    shift
    exec callpipe demo "$@"
    ;;
  test)
    setup
    need_chromium
    need_kcat
    shift
    # An isolated broker for the tests: its own port and data, stopped at the end whatever happens.
    export CALLPIPE_HOME=$ROOT/.cache/test
    export CALLPIPE_KAFKA_PORT=${CALLPIPE_TEST_KAFKA_PORT:-19092}
    export CALLPIPE_BOOTSTRAP=127.0.0.1:$CALLPIPE_KAFKA_PORT
    rm -rf "$CALLPIPE_HOME/kafka/data" "$CALLPIPE_HOME/state"
    trap 'callpipe kafka down >/dev/null 2>&1 || true' EXIT
    callpipe kafka up
    ruff format --check .
    ruff check .
    mypy
    # The soak trials (many kill -9 rounds, repeated outages) run on request: -m soak.
    pytest -m "not soak" "$@"
    ;;
  *)
    echo "usage: bash infra/dev.sh demo|test [args]" >&2
    exit 2
    ;;
esac
