#!/usr/bin/env bash
# Prints the project version: the one source of truth is project(... VERSION)
# in CMakeLists.txt (the server's preflight_build_info, the image tag of
# tools/image.sh; k8s/base's image tag is checked against it by k8s_test.py).
set -euo pipefail
sed -n 's/^project(preflight VERSION \([0-9][0-9.]*\).*/\1/p' "$(dirname "$0")/../CMakeLists.txt"
