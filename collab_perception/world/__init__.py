"""The embedded multi-drone world: a procedural landscape seen by N drones, rendered headless with OpenGL.

    from collab_perception.world import World, WorldConfig
    with World(WorldConfig(seed=0, drones=5, trajectory='waypoint')) as world:
        snap = world.step()                       # one synchronized snapshot, every drone
        v = snap.views[0]
        v.rgb, v.depth, v.labels, v.position, v.orientation_xyzw, v.K, v.obstruction_mask

It stands in for the AirSim worlds of the papers (handshake paper §IV-A "AirSim-CP", five drones;
MASH §IV, six drones with obstructions): no Unreal/AirSim runs here and no aerial data can be downloaded.
Pure Python + numpy + OpenCV + moderngl (EGL: Mesa llvmpipe on CPUs, the NVIDIA driver on GPUs); no ROS.

Conventions (unambiguous for the ROS bridge, which publishes sensor_msgs/Image + geometry_msgs/PoseStamped):
- World frame: ENU, x east, y north, z up, metres; the map tile is centred on the origin. (ROS REP 103.)
- Camera frame: the optical frame, x right, y down, z forward (OpenCV, ROS `*_optical_frame`).
- Pose: `position` (3,) and `orientation_xyzw` (4,) give the CAMERA in the world, camera-to-world:
  X_world = R(q) @ X_cam + position; `View.T_world_cam` is the same as a 4x4 matrix.
- Intrinsics: K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], square pixels, cx = (W-1)/2, cy = (H-1)/2: pixel
  (u, v) = (column, row) with integer coordinates at pixel centres; u = fx X/Z + cx, v = fy Y/Z + cy.
- Depth: float32 metres, planar (Z along the optical axis, AirSim's "DepthPlanar"), +inf where the ray hits
  nothing (sky), as REP 118 asks for 32FC1 depth images.
- RGB: uint8 (H, W, 3) in RGB order (sensor_msgs encoding rgb8). Labels: uint8 (H, W) class ids of
  config/classes.yaml (bare_ground, grass, road, building, tree, water, car, sky).
- Time: `Snapshot.time_s`, simulated seconds, one stamp for all views of a snapshot.

Modules: config (WorldConfig), landscape (maps), render (GL), trajectories, obstructions, degrade (blur +
noise), geometry (poses, reprojection, correspondences, warping), world (World).

The names above load their modules on first use: a drone's matcher needs `geometry` (numpy only) and must
not pull in the renderer (moderngl) or OpenCV with it.
"""
import importlib

_LAZY = {'World': 'world', 'Snapshot': 'world', 'View': 'world', 'WorldConfig': 'config',
         'load_world_config': 'config'}

__all__ = ['World', 'WorldConfig', 'Snapshot', 'View', 'load_world_config', 'degrade', 'geometry']


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f'.{_LAZY[name]}', __name__), name)
        globals()[name] = value     # also over a submodule of the same name (data.generate)
        return value
    if name in ('degrade', 'geometry'):
        return importlib.import_module(f'.{name}', __name__)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
