# Source this (bash) after `make setup`: the project's venv, its colcon install, and a ROS 2 environment
# that keeps DDS on this machine. Nodes, tests and the demo all run under it.
#   ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a Fast DDS profile with only shared memory and UDP on
#   127.0.0.1 (config/fastdds_localhost.xml), ROS_HOME in a temporary folder, and a ROS_DOMAIN_ID
#   (kept if already set; otherwise one drawn per shell in 1..100), and ONNX Runtime's telemetry off
#   (ORT_DISABLE_TELEMETRY=1: its wheels otherwise look up a Microsoft host from every process).
# collab_perception/rosenv.py applies the same settings to every process the Python code starts.
_cp_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ ! -f "$_cp_root/install/setup.bash" ]; then
  echo "collab_perception: run 'make setup' first ($_cp_root/install/setup.bash is missing)" >&2
  return 1 2>/dev/null || exit 1
fi
export VIRTUAL_ENV=$_cp_root/.venv
export PATH=$_cp_root/.venv/bin:$PATH
export AMENT_PREFIX_PATH=$_cp_root/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}
# colcon's setup.bash is not `set -u` clean
_cp_restore_u=$([[ $- == *u* ]] && echo 1 || true)
set +u
COLCON_TRACE= source "$_cp_root/install/setup.bash"
[ -n "$_cp_restore_u" ] && set -u
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export FASTDDS_DEFAULT_PROFILES_FILE=$_cp_root/config/fastdds_localhost.xml
export ORT_DISABLE_TELEMETRY=1
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 1 ))}
if [ -z "${ROS_HOME:-}" ] || [ "${ROS_HOME#/tmp/}" = "$ROS_HOME" ]; then
  ROS_HOME=$(mktemp -d -t collab-ros-home.XXXXXX)
  export ROS_HOME
fi
export ROS_LOG_DIR=$ROS_HOME/log
unset _cp_root _cp_restore_u
