#!/usr/bin/env bash
# The ros-* wheels on PyPI were built in a manylinux container with Python at /opt/python/cp311-cp311, and
# their exported CMake targets (*__rosidl_generator_py) still name its include directories. Point them at
# this venv's Python and numpy so that rosidl can build msg/. Idempotent.
set -euo pipefail
venv=${1:?usage: fix_wheel_cmake.sh VENV}
py_include=$("$venv/bin/python" -S -c "import sysconfig; print(sysconfig.get_paths()['include'])")
np_include=$(_ROS_WHEELS_BOOTSTRAP_COMPLETE=1 "$venv/bin/python" -c "import numpy; print(numpy.get_include())")
mapfile -t files < <(grep -rl '/opt/python/cp311-cp311' "$venv/share" --include='*.cmake' || true)
for f in "${files[@]}"; do
  sed -i -e "s#/opt/python/cp311-cp311/include/python3.11#${py_include}#g" \
         -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#${np_include}#g" "$f"
done
left=$(grep -rl '/opt/python/cp311-cp311' "$venv/share" --include='*.cmake' | wc -l || true)
if [ "$left" != "0" ]; then
  echo "fix_wheel_cmake: $left CMake files still reference /opt/python/cp311-cp311" >&2
  exit 1
fi
echo "fix_wheel_cmake: patched ${#files[@]} CMake files"
