"""collab_perception: bandwidth-limited collaborative perception for drone swarms on ROS 2."""
import os
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

# Libraries that would contact third parties unless told not to, and the variables that tell them.
# ONNX Runtime's wheels carry Microsoft's 1DS telemetry: every process that opens a session resolves
# mobile.events.data.microsoft.com; the library reads this variable once, when it loads, and
# onnxruntime.disable_telemetry_events() does not stop the lookups. Forced here, in the package's first
# import, so that it holds however a process starts (ros2 run / ros2 launch, python -m, the CLI, tests);
# rosenv.safe_ros_env and scripts/env.sh set the same for every child and shell.
OFFLINE_ENV = {'ORT_DISABLE_TELEMETRY': '1'}
os.environ.update(OFFLINE_ENV)
