#!/bin/sh
# The daemon image's install steps, in one place: deploy/Dockerfile runs them, and CI runs
# the same script outside Docker (deploy/docker/check.sh), so what CI proves is what the
# image does.
#
#   install.sh build   SRC WHEELS   wheels of eventq (the repository at SRC), of the example
#                                   app (SRC/deploy/example-app) and of every dependency
#   install.sh install WHEELS VENV  a venv at VENV with the app and eventq from those wheels
#                                   only (no index, no source builds, no compiler)
#
# POSIX sh (the slim image has no bash). PYTHON names the interpreter (default python3).
set -eu

python="${PYTHON:-python3}"
app="orders-projector"

usage() {
    echo "usage: install.sh build SRC WHEELS | install.sh install WHEELS VENV" >&2
    exit 2
}

[ $# -eq 3 ] || usage
case "$1" in
    build)
        src="$2"
        wheels="$3"
        [ -f "$src/setup.cfg" ] || { echo "install.sh: $src is not the eventq repository (no setup.cfg)" >&2; exit 2; }
        # Binary wheels only for the dependencies (--only-binary :all:): a dependency that
        # would need compiling fails the build here instead of in production.
        "$python" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$wheels" \
            --only-binary :all: "$src" "$src/deploy/example-app"
        ;;
    install)
        wheels="$2"
        venv="$3"
        [ -d "$wheels" ] || { echo "install.sh: no wheel folder $wheels; run install.sh build first" >&2; exit 2; }
        "$python" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-index \
            --find-links "$wheels" --only-binary :all: "$app"
        "$venv/bin/eventq" --help >/dev/null
        ;;
    *)
        usage
        ;;
esac
