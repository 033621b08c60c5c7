#!/usr/bin/env bash
# The report's browser test needs a Chromium: install Debian's when it is missing and the package manager can
# run; where it cannot be had, say so and go on (that one test is then skipped with a message). Never fails.
set -uo pipefail

install_chromium() {
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        if ! sudo -n true 2>/dev/null; then
            echo "ci: installing chromium needs root (or password-less sudo)" >&2
            return 1
        fi
        sudo="sudo -n"
    fi
    timeout 600 $sudo apt-get update -qq \
        && timeout 900 $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
}

if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        install_chromium || echo "ci: could not install chromium: the report's browser test will be skipped" >&2
    else
        echo "ci: no chromium and no apt-get: the report's browser test will be skipped" >&2
    fi
fi
