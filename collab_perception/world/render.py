"""Headless OpenGL renderer of the world (moderngl on EGL: Mesa llvmpipe on CPUs, the NVIDIA driver on GPUs).

One `Renderer` owns one standalone GL context. Every GL call is made inside `with self.ctx:`, which makes
that context current, so several renderers (several `World`s) can live in one process and one thread.

Per snapshot, all N views are rendered side by side into one atlas framebuffer (N*W x H) and read back once
per output, which keeps the per-view overhead small on llvmpipe:
  1. scene: the landscape's vertex buffer, only the chunks inside each camera's frustum, nearest chunks
     first and objects before the ground under them (so early depth testing skips hidden fragments),
     writing RGB, class and planar depth at once (multiple render targets, see shaders.py);
  2. sky: a full-screen triangle per view at the far plane, shaded only where nothing was drawn (class
     sky, depth +inf);
  3. obstructions (optional): drawn after the scene into a second framebuffer that shares the depth buffer
     but binds only RGB-with-obstructions, depth-with-obstructions and the mask, so labels and the clean
     RGB/depth keep the occluded surface.
The sun's shadow map is rendered once per map (static scene).

The projection is built from K so that GL samples each pixel at its centre, (u, v) integer, exactly where
geometry.py's pinhole model puts it; the atlas rows run with v, so no image flip is needed on read-back.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import moderngl
import numpy as np

from . import shaders
from .landscape import Landscape
from .meshes import VERTEX_ATTRIBUTES, VERTEX_DTYPE, VERTEX_FORMAT

NEAR_M = 0.2
FAR_M = 6000.0


@dataclass
class Camera:
    position: np.ndarray   # (3,) world ENU metres
    rotation: np.ndarray   # (3, 3) camera-to-world; columns: optical x (right), y (down), z (forward)
    K: np.ndarray          # (3, 3)


@dataclass
class RenderOutput:
    """Per-view arrays, view axis first. The *_obstructed fields and the mask are None without obstructions."""
    rgb: np.ndarray                  # (N, H, W, 3) uint8, without obstructions
    labels: np.ndarray               # (N, H, W) uint8
    depth: np.ndarray                # (N, H, W) float32, planar metres, +inf for sky
    rgb_obstructed: Optional[np.ndarray] = None
    depth_obstructed: Optional[np.ndarray] = None
    obstruction_mask: Optional[np.ndarray] = None


def projection_from_intrinsics(K: np.ndarray, width: int, height: int, near: float = NEAR_M,
                               far: float = FAR_M) -> np.ndarray:
    """Optical-frame point -> clip space, so that NDC x = 2(u+0.5)/W - 1 and y = 2(v+0.5)/H - 1 for the
    pixel (u, v) of `u = fx X/Z + cx`: pixel centres land on GL's sample points, and window row = v."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    return np.array([
        [2 * fx / width, 0, 2 * (cx + 0.5) / width - 1, 0],
        [0, 2 * fy / height, 2 * (cy + 0.5) / height - 1, 0],
        [0, 0, (far + near) / (far - near), -2 * far * near / (far - near)],
        [0, 0, 1, 0],
    ])


def view_matrix(camera: Camera) -> np.ndarray:
    """World -> camera optical frame (the inverse of the camera-to-world pose)."""
    M = np.eye(4)
    M[:3, :3] = camera.rotation.T
    M[:3, 3] = -camera.rotation.T @ camera.position
    return M


@functools.lru_cache(maxsize=1)
def noise_texture(size: int = 256, seed: int = 7) -> np.ndarray:
    """Tileable RGBA8 noise (size x size) for the shaders, made by band-pass filtering white noise in the
    Fourier domain (periodic by construction). r and a: fractal noise (1/f spectrum, features of 1/16 of
    the tile and finer); g: blobs (1/32); b: grain (1/128). Each band is scaled to mean 0.5, std 0.18."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(size) * size                      # cycles per tile
    radius = np.hypot(f[:, None], f[None, :])
    def band(weight):
        spectrum = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) * weight
        field = np.real(np.fft.ifft2(spectrum))
        return np.clip(0.5 + 0.18 * (field - field.mean()) / field.std(), 0.0, 1.0)
    with np.errstate(divide='ignore'):
        fractal = np.where((radius >= 12) & (radius <= size / 2), 1.0 / np.maximum(radius, 1e-9) ** 1.1, 0.0)
    def bump(centre, width):
        return np.exp(-0.5 * ((radius - centre) / width) ** 2)
    rgba = np.stack([band(fractal), band(bump(32, 8)), band(bump(128, 32)), band(fractal)], axis=-1)
    return np.round(rgba * 255).astype(np.uint8)


def _mat(m: np.ndarray) -> bytes:
    """numpy row-major matrix -> GLSL column-major bytes."""
    return np.ascontiguousarray(m.T, dtype='f4').tobytes()


def light_matrix(landscape: Landscape) -> np.ndarray:
    """World -> sun clip space: an orthographic box around the tile (and its tallest object) seen from the
    sun, for the shadow map."""
    L = np.asarray(landscape.lighting.sun_direction, dtype=np.float64)
    forward = -L
    up = np.array([0.0, 0.0, 1.0]) if abs(forward[2]) < 0.99 else np.array([0.0, 1.0, 0.0])
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    h = landscape.half
    zmax = float(landscape.chunk_bounds[:, 5].max()) if len(landscape.chunk_bounds) else 0.0
    zmin = float(landscape.heights.min()) - 1.0
    corners = np.array([[x, y, z] for x in (-h, h) for y in (-h, h) for z in (zmin, zmax + 1.0)])
    a, b, c = corners @ right, corners @ up, corners @ forward
    view = np.eye(4)
    view[0, :3], view[1, :3], view[2, :3] = right, up, forward
    lo, hi = np.array([a.min(), b.min(), c.min()]), np.array([a.max(), b.max(), c.max()])
    ortho = np.eye(4)
    ortho[:3, :3] = np.diag(2.0 / (hi - lo))
    ortho[:3, 3] = -(hi + lo) / (hi - lo)
    return ortho @ view


class Renderer:
    """Renders N cameras at once into RGB, labels and planar depth (and obstruction outputs)."""

    def __init__(self, width: int, height: int, views: int, obstructions: bool = False,
                 shadow_map_size: int = 2048):
        self.width, self.height, self.views = width, height, views
        self.obstructions = obstructions
        self.shadow_map_size = shadow_map_size
        # llvmpipe's rasterizer threads belong to its screen, which outlives every context and does not
        # survive fork(): a forked child that renders would wait on them forever. Rasterizing on the calling
        # thread avoids that and is as fast on one core (25 snapshots/s either way, bench/bench_world.py).
        # Set LP_NUM_THREADS yourself for more threads (then create Worlds only after forking). GPUs ignore it.
        os.environ.setdefault('LP_NUM_THREADS', '0')
        self.ctx = moderngl.create_standalone_context(backend='egl', require=330)
        self.landscape: Optional[Landscape] = None
        self._scene_vao = self._shadow_vao = self._vbo = self._ibo = self._ground = None
        with self.ctx:
            self._build_programs()
            self._build_targets()

    # ---------------------------------------------------------------------------------------- setup
    def _build_programs(self):
        ctx = self.ctx
        self.scene_prog = ctx.program(vertex_shader=shaders.SCENE_VERTEX, fragment_shader=shaders.SCENE_FRAGMENT)
        self.sky_prog = ctx.program(vertex_shader=shaders.SKY_VERTEX, fragment_shader=shaders.SKY_FRAGMENT)
        self.shadow_prog = ctx.program(vertex_shader=shaders.SHADOW_VERTEX, fragment_shader=shaders.SHADOW_FRAGMENT)
        self.obstruction_prog = ctx.program(vertex_shader=shaders.SCENE_VERTEX,
                                            fragment_shader=shaders.OBSTRUCTION_FRAGMENT)
        self.sky_vao = ctx.vertex_array(self.sky_prog, [])
        self.shadow_map = ctx.depth_texture((self.shadow_map_size,) * 2)
        self.shadow_map.compare_func = '<='
        self.shadow_map.filter = (moderngl.LINEAR, moderngl.LINEAR)
        self.shadow_map.repeat_x = self.shadow_map.repeat_y = False
        self.shadow_fbo = ctx.framebuffer(depth_attachment=self.shadow_map)
        noise = noise_texture()
        self.noise = ctx.texture(noise.shape[:2][::-1], 4, noise.tobytes())
        self.noise.build_mipmaps()
        self.noise.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
        for prog in (self.scene_prog, self.sky_prog, self.obstruction_prog):
            prog['u_noise'] = 2
        self.scene_prog['u_ground'] = 0
        self.scene_prog['u_shadow'] = 1
        self.scene_prog['u_shadow_texel'] = 1.0 / self.shadow_map_size
        self._obstruction_vbo = self._obstruction_vao = None   # grown on demand (render)

    def _build_targets(self):
        ctx = self.ctx
        size = (self.width * self.views, self.height)
        self.rgb_tex = ctx.texture(size, 4)
        self.label_tex = ctx.texture(size, 1)
        self.depth_tex = ctx.texture(size, 1, dtype='f4')
        self.depth_buffer = ctx.depth_renderbuffer(size)
        targets = [self.rgb_tex, self.label_tex, self.depth_tex]
        if self.obstructions:
            self.rgb_obs_tex = ctx.texture(size, 4)
            self.depth_obs_tex = ctx.texture(size, 1, dtype='f4')
            self.mask_tex = ctx.texture(size, 1)
            targets += [self.rgb_obs_tex, self.depth_obs_tex, self.mask_tex]
            self.obstruction_fbo = ctx.framebuffer([self.rgb_obs_tex, self.depth_obs_tex, self.mask_tex],
                                                   self.depth_buffer)
        self.fbo = ctx.framebuffer(targets, self.depth_buffer)

    def set_landscape(self, landscape: Landscape) -> None:
        """Upload a map (vertex buffer, ground texture, lighting) and render its shadow map."""
        with self.ctx:
            for obj in (self._scene_vao, self._shadow_vao, self._vbo, self._ibo, self._ground):
                if obj is not None:
                    obj.release()
            ctx = self.ctx
            self.landscape = landscape
            self._vbo = ctx.buffer(np.ascontiguousarray(landscape.vertices, dtype=VERTEX_DTYPE).tobytes())
            self._ibo = ctx.buffer(np.ascontiguousarray(landscape.indices, dtype=np.uint32).tobytes())
            self._scene_vao = ctx.vertex_array(self.scene_prog, [(self._vbo, VERTEX_FORMAT, *VERTEX_ATTRIBUTES)],
                                               index_buffer=self._ibo, index_element_size=4)
            skip = VERTEX_DTYPE.itemsize - 12   # the depth-only pass reads positions only
            self._shadow_vao = ctx.vertex_array(self.shadow_prog, [(self._vbo, f'3f {skip}x', 'in_position')],
                                                index_buffer=self._ibo, index_element_size=4)
            ground = np.ascontiguousarray(landscape.ground)
            self._ground = ctx.texture((ground.shape[1], ground.shape[0]), 4, ground.tobytes())
            self._ground.filter = (moderngl.NEAREST, moderngl.NEAREST)
            self._ground.repeat_x = self._ground.repeat_y = False

            light = light_matrix(landscape)
            self.shadow_fbo.use()
            self.shadow_fbo.clear(depth=1.0)
            ctx.enable_only(moderngl.DEPTH_TEST)
            self.shadow_prog['u_light'].write(_mat(light))
            self._shadow_vao.render(moderngl.TRIANGLES, vertices=landscape.skirt_range[0])

            lt = landscape.lighting
            uniforms = {'u_sun_dir': lt.sun_direction, 'u_sun_color': lt.sun_color, 'u_ambient': lt.ambient_color,
                        'u_sky_zenith': lt.sky_zenith, 'u_sky_horizon': lt.sky_horizon,
                        'u_haze_density': lt.haze_density, 'u_cloud_cover': lt.cloud_cover}
            for prog in (self.scene_prog, self.sky_prog, self.obstruction_prog):
                for name, value in uniforms.items():
                    if name in prog:
                        prog[name].value = tuple(np.asarray(value, dtype=float).ravel()) if np.ndim(value) else float(value)
            for name, rgb in landscape.palette.items():
                key = f'u_{name}'
                if key in self.scene_prog:
                    self.scene_prog[key].value = tuple(float(c) for c in rgb)
            self.scene_prog['u_light'].write(_mat(light))
            self.scene_prog['u_ground_rect'].value = (-landscape.half, -landscape.half, 1.0 / landscape.size_m)

    # ------------------------------------------------------------------------------------ rendering
    def _visible_chunks(self, camera: Camera) -> np.ndarray:
        """Chunk indices whose bounding boxes intersect the camera frustum, nearest first."""
        b = self.landscape.chunk_bounds
        counts = self.landscape.chunk_ranges[:, 1]
        corners = np.stack([b[:, [i, j, k]] for i in (0, 1) for j in (2, 3) for k in (4, 5)], axis=1)  # (C, 8, 3)
        cam = (corners - camera.position) @ camera.rotation            # optical-frame coordinates
        x, y, z = cam[..., 0], cam[..., 1], cam[..., 2]
        K = camera.K
        left, right = (-0.5 - K[0, 2]) / K[0, 0], (self.width - 0.5 - K[0, 2]) / K[0, 0]
        top, bottom = (-0.5 - K[1, 2]) / K[1, 1], (self.height - 0.5 - K[1, 2]) / K[1, 1]
        outside = (np.all(z < NEAR_M, axis=1) | np.all(x < left * z, axis=1) | np.all(x > right * z, axis=1)
                   | np.all(y < top * z, axis=1) | np.all(y > bottom * z, axis=1))
        visible = np.flatnonzero(~outside & (counts > 0))
        centre = corners[visible].mean(axis=1)
        return visible[np.argsort(np.linalg.norm(centre - camera.position, axis=1))]

    def render(self, cameras: Sequence[Camera], time_s: float = 0.0,
               obstruction_vertices: Optional[np.ndarray] = None) -> RenderOutput:
        if self.landscape is None:
            raise RuntimeError('set_landscape() first')
        if len(cameras) != self.views:
            raise ValueError(f'expected {self.views} cameras, got {len(cameras)}')
        W, H, N = self.width, self.height, self.views
        with self.ctx:
            ctx = self.ctx
            self.fbo.use()
            self.fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
            self._ground.use(0)
            self.shadow_map.use(1)
            self.noise.use(2)
            draw_obstructions = self.obstructions and obstruction_vertices is not None and len(obstruction_vertices)
            if draw_obstructions:
                data = np.ascontiguousarray(obstruction_vertices, dtype=VERTEX_DTYPE).tobytes()
                if self._obstruction_vbo is None or self._obstruction_vbo.size < len(data):
                    if self._obstruction_vbo is not None:
                        self._obstruction_vao.release()
                        self._obstruction_vbo.release()
                    self._obstruction_vbo = ctx.buffer(reserve=max(len(data), 1 << 16), dynamic=True)
                    self._obstruction_vao = ctx.vertex_array(
                        self.obstruction_prog, [(self._obstruction_vbo, VERTEX_FORMAT, *VERTEX_ATTRIBUTES)])
                self._obstruction_vbo.write(data)
            for prog in (self.scene_prog, self.sky_prog, self.obstruction_prog):
                if 'u_time' in prog:
                    prog['u_time'].value = float(time_s)
            skirt_first, skirt_count = self.landscape.skirt_range
            for i, cam in enumerate(cameras):
                K = cam.K
                self.fbo.use()                        # use() restores the framebuffer's own viewport: set it after
                ctx.viewport = (i * W, 0, W, H)
                # 1) scene, frustum-culled chunks nearest first, then the skirt
                ctx.enable_only(moderngl.DEPTH_TEST | moderngl.CULL_FACE)
                ctx.depth_func = '<'
                ctx.front_face = 'cw'  # the projection maps v downwards to +y: screen winding flips
                view = _mat(view_matrix(cam))
                proj = _mat(projection_from_intrinsics(K, W, H))
                self.scene_prog['u_view'].write(view)
                self.scene_prog['u_proj'].write(proj)
                self.scene_prog['u_camera_pos'].value = tuple(float(c) for c in cam.position)
                for c in self._visible_chunks(cam):
                    first, count = self.landscape.chunk_ranges[c]
                    self._scene_vao.render(moderngl.TRIANGLES, vertices=int(count), first=int(first))
                self._scene_vao.render(moderngl.TRIANGLES, vertices=skirt_count, first=skirt_first)
                # 2) sky where nothing was drawn (depth still at the cleared far value)
                ctx.enable_only(moderngl.DEPTH_TEST)
                ctx.depth_func = '<='
                self.sky_prog['u_viewport_origin'].value = (float(i * W), 0.0)
                self.sky_prog['u_intrinsics'].value = (K[0, 0], K[1, 1], K[0, 2], K[1, 2])
                self.sky_prog['u_cam_to_world'].write(_mat(cam.rotation))
                self.sky_vao.render(moderngl.TRIANGLES, vertices=3)
                ctx.depth_func = '<'
                # 3) obstructions: two-sided, over the finished scene
                if draw_obstructions:
                    ctx.enable_only(moderngl.DEPTH_TEST)
                    self.obstruction_fbo.use()
                    ctx.viewport = (i * W, 0, W, H)
                    self.obstruction_prog['u_view'].write(view)
                    self.obstruction_prog['u_proj'].write(proj)
                    self.obstruction_prog['u_camera_pos'].value = tuple(float(c) for c in cam.position)
                    self._obstruction_vao.render(moderngl.TRIANGLES, vertices=len(obstruction_vertices))
            return self._read(N, W, H, bool(self.obstructions))

    def _read(self, N: int, W: int, H: int, obstructions: bool) -> RenderOutput:
        def read(tex, dtype):
            """Atlas texture (H, N*W, C) -> (N, H, W, C), one contiguous array."""
            raw = np.frombuffer(tex.read(), dtype=dtype).reshape(H, N, W, tex.components)
            return np.ascontiguousarray(raw.transpose(1, 0, 2, 3))

        out = RenderOutput(rgb=np.ascontiguousarray(read(self.rgb_tex, np.uint8)[..., :3]),
                           labels=read(self.label_tex, np.uint8)[..., 0],
                           depth=read(self.depth_tex, np.float32)[..., 0])
        if obstructions:
            out.rgb_obstructed = np.ascontiguousarray(read(self.rgb_obs_tex, np.uint8)[..., :3])
            out.depth_obstructed = read(self.depth_obs_tex, np.float32)[..., 0]
            out.obstruction_mask = read(self.mask_tex, np.uint8)[..., 0] > 127
        return out

    @property
    def device(self) -> str:
        """The GL renderer and version, e.g. 'llvmpipe (LLVM 15.0.6, 256 bits), 4.5 (Core Profile) Mesa 22.3.6'."""
        with self.ctx:
            return f'{self.ctx.info["GL_RENDERER"]}, {self.ctx.info["GL_VERSION"]}'

    def release(self) -> None:
        """Free the GL context (and everything in it)."""
        if self.ctx is not None:
            self.ctx.release()
            self.ctx = None
