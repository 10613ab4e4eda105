#!/usr/bin/env bash
# `make setup`: everything this project needs, from the package registries only, into this checkout.
#   1. .venv with the pinned requirements (skipped when requirements.txt has not changed)
#   2. the ROS wheels' CMake fix-up (scripts/fix_wheel_cmake.sh)
#   3. colcon build of this very package (msg/ + Python package + node wrappers) into ./install
#   4. `collab-perception` console script (pip install -e . --no-deps)
#   5. strace, for the network-safety tests (apt-get, when it is missing and this is root)
# Idempotent; a second run takes a few seconds. Source scripts/env.sh afterwards.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=$root/.venv
python=${PYTHON:-python3}
t0=$(date +%s)

"$python" - <<'PY' || { echo "setup: Python 3.11 is required (the ROS 2 Kilted wheels are cp311)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)
PY

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  "$python" -m venv "$venv"
fi
stamp=$venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing pinned requirements (first time: about a minute)"
  # (this machine's pip config names local wheel folders that may not exist: drop those warnings)
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
  echo "$want" > "$stamp"
  rm -f "$venv/.cmake-fixed"
fi
# The AirSim client: its 1.8.1 sdist declares msgpack-rpc-python (broken on current tornado) and
# opencv-contrib-python; rpc-msgpack (requirements.txt) provides the same msgpackrpc module, so install it
# without dependencies. (cosysairsim, the Cosys-AirSim client, is the alternative: it ships msgpackrpc
# through another package, so install only one of the two; see README.)
if ! compgen -G "$venv/lib/python3*/site-packages/airsim-1.8.1*" > /dev/null; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation airsim==1.8.1 \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
fi
if [ ! -f "$venv/.cmake-fixed" ]; then
  scripts/fix_wheel_cmake.sh "$venv"
  touch "$venv/.cmake-fixed"
fi

echo "setup: colcon build (msg/ + collab_perception) into $root/install"
# CMake refuses exported include paths inside the source directory, and .venv (numpy's headers) is inside
# this checkout: build through a workspace whose src/ links back here, so the source dir is .ws/src/...
mkdir -p .ws/src log
ln -sfn ../.. .ws/src/collab_perception
export PATH=$venv/bin:$PATH AMENT_PREFIX_PATH=$venv VIRTUAL_ENV=$venv
if ! colcon --log-base log build --base-paths .ws/src --build-base build --install-base install \
    --symlink-install --event-handlers console_cohesion- console_direct- \
    --cmake-args -DCMAKE_PREFIX_PATH="$venv" -DPython3_EXECUTABLE="$venv/bin/python" \
    -DBUILD_TESTING=OFF > log/colcon-build.txt 2>&1; then
  tail -n 60 log/colcon-build.txt >&2
  echo "setup: colcon build failed (full log: log/colcon-build.txt)" >&2
  exit 1
fi

if [ ! -x "$venv/bin/collab-perception" ] || [ setup.py -nt "$venv/bin/collab-perception" ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . > log/pip-editable.txt 2>&1 \
    || { cat log/pip-editable.txt >&2; exit 1; }
  touch "$venv/bin/collab-perception"
fi
# The network-safety tests watch every process with strace (a Debian package, not a wheel).
if ! command -v strace > /dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    echo "setup: installing strace (test/test_network_safety.py traces the network calls of the swarm)"
    { apt-get update -qq && apt-get install -y -qq strace; } > log/apt-strace.txt 2>&1 \
      || { cat log/apt-strace.txt >&2; echo "setup: could not install strace" >&2; exit 1; }
  else
    echo "setup: strace is missing; test/test_network_safety.py needs it (apt-get install strace)" >&2
  fi
fi
echo "setup: done in $(( $(date +%s) - t0 )) s. Next: source scripts/env.sh"
