"""GLSL 3.30 sources of the world's renderer (render.py).

One scene pass writes, per fragment, through multiple render targets (MRT):
  location 0  RGB (RGBA8)                     what the camera sees without obstructions
  location 1  class id / 255 (R8)             ground truth labels
  location 2  planar depth, metres (R32F)     Z in the camera optical frame, +inf for sky
  location 3  RGB with obstructions (RGBA8)   = location 0 here; the obstruction pass draws over it
  location 4  depth with obstructions (R32F)  = location 2 here
  location 5  obstruction mask (R8)           0 here, 1 where the obstruction pass draws
Outputs without an attachment are dropped by GL, so worlds without obstructions bind only 0-2.

Appearance is procedural and per class varied on purpose (issue 3: "colour alone does not give the class
and blur really hurts"): value-noise textures at several scales in world space, per-parcel / per-object
tints and stripe directions from the ground texture and vertex attributes, per-map palettes, Lambert sun
light with a shadow map, hemispheric ambient light, water with Fresnel sky reflection and sun glint, and
aerial perspective (haze) towards the horizon colour. Noise comes from one tileable, mip-mapped RGBA texture
(four bands per fetch, anti-aliased by the mip chain) rather than arithmetic value noise, which would cost
several times more per fragment on llvmpipe.
"""

# Keep in sync with meshes.Material and landscape class ids.
_DEFINES = """
#define BARE_GROUND 0
#define GRASS 1
#define ROAD 2
#define BUILDING 3
#define TREE 4
#define WATER 5
#define CAR 6
#define SKY 7
#define M_TERRAIN 0
#define M_WALL 1
#define M_ROOF_FLAT 2
#define M_ROOF_TILED 3
#define M_CROWN 4
#define M_TRUNK 5
#define M_CAR_BODY 6
#define M_CAR_GLASS 7
#define M_MATTE 8
#define M_GLOSSY 9
"""

_NOISE = """
// Per-cell random numbers (Dave Hoskins, "Hash without Sine": arithmetic only, the same on every driver).
float hash12(vec2 p) {
    vec3 p3 = fract(vec3(p.xyx) * 0.1031);
    p3 += dot(p3, p3.yzx + 33.33);
    return fract((p3.x + p3.y) * p3.z);
}
// Texture noise: one mip-mapped fetch gives four bands (render.noise_texture), filtered to the pixel
// footprint, far cheaper on llvmpipe than arithmetic value noise. One unit of p is about one feature.
uniform sampler2D u_noise;
vec4 noise4(vec2 p) { return texture(u_noise, p * (1.0 / 16.0)); }   // r, a: fbm; g: blobs (x2 finer); b: grain (x8)
"""

_LIGHT_UNIFORMS = """
uniform vec3 u_sun_dir;
uniform vec3 u_sun_color;
uniform vec3 u_ambient;
uniform vec3 u_sky_zenith;
uniform vec3 u_sky_horizon;
uniform float u_haze_density;
uniform float u_cloud_cover;
uniform vec3 u_camera_pos;
uniform float u_time;

vec3 sky_gradient(vec3 d) {                // horizon-to-zenith colour and the sun's glow (water reflections)
    float e = clamp(d.z, 0.0, 1.0);
    float s = max(dot(d, u_sun_dir), 0.0);
    return mix(u_sky_horizon, u_sky_zenith, sqrt(e)) + u_sun_color * (pow(s, 600.0) * 3.0 + pow(s, 10.0) * 0.12);
}
"""

_OBJECT_MATERIALS = """
// big: noise at ~11 m features, small: at ~0.9 m (see noise_coords); q.b of each is 8x finer grain.
vec3 object_albedo(int material, vec3 p, vec3 base, float ra, vec4 big, vec4 small, inout float spec, inout vec3 n) {
    if (material == M_WALL) {
        vec3 c = base * (0.82 + 0.3 * (small.r - 0.5) + 0.15 * (big.b - 0.5));
        if (abs(n.z) < 0.5) {                // windows in rows and columns, per-building spacing
            vec2 tangent = normalize(vec2(-n.y, n.x));
            float s = dot(p.xy, tangent) / (2.6 + ra);
            float h = (p.z + ra * 3.0) / 3.0;
            float window = step(0.3, fract(s)) * step(fract(s), 0.72) * step(0.35, fract(h)) * step(fract(h), 0.78);
            c = mix(c, vec3(0.12, 0.15, 0.2) + 0.15 * small.g, window);
            spec = window * 0.4;
        }
        return c;
    }
    if (material == M_ROOF_FLAT) {
        vec3 c = base * (0.82 + 0.4 * (big.b - 0.5) + 0.25 * (small.r - 0.5));
        vec2 cell = floor(p.xy / 3.0);
        vec2 f = fract(p.xy / 3.0);
        if (hash12(cell + ra * 50.0) < 0.12 && all(greaterThan(f, vec2(0.25))) && all(lessThan(f, vec2(0.75))))
            c = vec3(0.62, 0.63, 0.64) * (0.9 + 0.2 * hash12(cell));                 // vents and units
        return c;
    }
    if (material == M_ROOF_TILED) {
        float rows = step(0.5, fract(p.z * 3.2));
        return base * (0.8 + 0.12 * rows + 0.3 * (small.r - 0.5) + 0.2 * (big.b - 0.5));
    }
    if (material == M_CROWN) {               // leaf clumps: brightness and a bumped normal
        n = normalize(n + 1.2 * (small.gba - 0.5));
        return base * (0.5 + 1.0 * small.r);
    }
    if (material == M_TRUNK) return base * (0.75 + 0.5 * (small.b - 0.5));
    if (material == M_CAR_BODY) { spec = 0.5; return base; }
    if (material == M_CAR_GLASS) {
        if (n.z > 0.7) { spec = 0.5; return base; }
        spec = 0.8;
        return vec3(0.06, 0.08, 0.1);
    }
    if (material == M_GLOSSY) { spec = 1.0; return base * (0.9 + 0.2 * (small.g - 0.5)); }
    // M_MATTE (obstructions): streaky feathers, bark, leaves
    return base * (0.55 + 0.9 * small.r);
}

// Noise coordinates of a surface point: xy plus a slanted z, so walls and crowns get texture too; a
// per-object offset keeps neighbouring objects from sharing a pattern.
vec2 noise_coords(vec3 p, float ra) { return p.xy + p.z * vec2(0.71, 0.37) + ra * 40.0; }
"""

SCENE_VERTEX = """
#version 330 core
uniform mat4 u_view;    // world -> camera optical frame (x right, y down, z forward)
uniform mat4 u_proj;    // optical frame -> clip space, built from K (render.projection_from_intrinsics)
uniform mat4 u_light;   // world -> sun clip space (shadow map)
in vec3 in_position;
in vec3 in_normal;
in vec4 in_color;
in vec4 in_attr;
out vec3 v_world;
out vec3 v_normal;
out float v_depth;
out vec3 v_light;
flat out vec4 v_color;
flat out vec4 v_attr;
void main() {
    vec4 cam = u_view * vec4(in_position, 1.0);
    gl_Position = u_proj * cam;
    v_world = in_position;
    v_normal = in_normal;
    v_depth = cam.z;
    v_light = (u_light * vec4(in_position, 1.0)).xyz * 0.5 + 0.5;
    v_color = in_color;
    v_attr = in_attr;
}
"""

SCENE_FRAGMENT = "#version 330 core\n" + _DEFINES + _NOISE + _LIGHT_UNIFORMS + _OBJECT_MATERIALS + """
uniform sampler2D u_ground;        // RGBA8: class, tint, variant, marking (nearest)
uniform vec3 u_ground_rect;        // x0, y0 (tile corner), 1 / tile size
uniform sampler2DShadow u_shadow;
uniform float u_shadow_texel;
uniform vec3 u_grass_lush, u_grass_dry, u_soil_light, u_soil_dark, u_asphalt, u_dirt_road;
uniform vec3 u_water_deep, u_water_shallow;

in vec3 v_world;
in vec3 v_normal;
in float v_depth;
in vec3 v_light;
flat in vec4 v_color;
flat in vec4 v_attr;

layout(location = 0) out vec4 o_rgb;
layout(location = 1) out float o_label;
layout(location = 2) out float o_depth;
layout(location = 3) out vec4 o_rgb_obstructed;
layout(location = 4) out float o_depth_obstructed;
layout(location = 5) out float o_mask;

float sun_visibility(vec3 n) {
    // one hardware-filtered tap (2x2 PCF); a shadow texel is ~0.2 m, well under a pixel's footprint
    vec3 s = v_light;
    if (any(lessThan(s, vec3(0.0))) || any(greaterThan(s, vec3(1.0)))) return 1.0;
    float bias = u_shadow_texel * (1.5 + 3.0 * (1.0 - abs(dot(n, u_sun_dir))));
    return texture(u_shadow, vec3(s.xy, s.z - bias));
}

vec3 ground_albedo(int cls, vec3 p, float tint, float variant, float marking, vec4 big, vec4 small,
                   inout float spec, inout vec3 n, inout bool is_water) {
    float stripe_angle = variant * 6.2832;
    vec2 stripe_dir = vec2(cos(stripe_angle), sin(stripe_angle));
    if (cls == GRASS) {
        vec3 c = mix(u_grass_lush, u_grass_dry, clamp(tint * 0.75 + (big.r - 0.5) * 0.9, 0.0, 1.0));
        c *= 0.8 + 0.35 * (big.b - 0.5) + 0.3 * (small.r - 0.5);
        if (variant < 0.35) c *= 0.93 + 0.07 * sign(sin(dot(p.xy, stripe_dir) * 1.2));   // mowing stripes
        return c;
    }
    if (cls == BARE_GROUND) {
        vec3 c = mix(u_soil_dark, u_soil_light, clamp(tint + (big.a - 0.5) * 0.8, 0.0, 1.0));
        c *= 0.85 + 0.35 * (big.b - 0.5) + 0.3 * (small.a - 0.5);
        if (variant > 0.5) c *= 0.86 + 0.14 * sin(dot(p.xy, stripe_dir) * 5.2);          // furrows
        return mix(c, u_grass_dry, 0.4 * smoothstep(0.6, 0.8, big.g));                  // weeds
    }
    if (cls == ROAD) {
        if (variant > 0.5) {                                                             // dirt track
            vec3 c = u_dirt_road * (0.85 + 0.3 * (big.b - 0.5) + 0.3 * (small.r - 0.5));
            return mix(c, u_soil_dark, 0.3 * smoothstep(0.55, 0.75, big.g));
        }
        vec3 c = u_asphalt * (0.75 + 0.5 * tint) * (0.9 + 0.3 * (big.b - 0.5) + 0.2 * (small.b - 0.5));
        c *= 1.0 - 0.25 * smoothstep(0.68, 0.75, big.a);                                // repair patches
        spec = 0.08;
        return mix(c, vec3(0.88, 0.88, 0.82), marking);
    }
    // water: tint is the distance from the shore; the small-scale noise bends the normal (waves)
    is_water = true;
    n = normalize(vec3((small.g - 0.5) * 0.5, (small.a - 0.5) * 0.5, 1.0));
    spec = 0.9;
    return mix(u_water_shallow, u_water_deep, smoothstep(0.0, 0.7, tint)) * (0.9 + 0.25 * (big.r - 0.5));
}

void main() {
    // A fixed set of texture fetches up front, then arithmetic only: llvmpipe runs 8 fragments in SIMD
    // lanes and pays for every branch any lane takes, so fetches inside class branches would add up.
    int material = int(v_attr.y * 255.0 + 0.5);
    int cls = int(v_attr.x * 255.0 + 0.5);
    vec3 p = v_world;
    vec3 n = normalize(v_normal);
    float spec = 0.0;
    bool is_water = false;
    vec2 q = noise_coords(p, material == M_TERRAIN ? 0.0 : v_attr.z);
    vec4 big = noise4(q / 11.0);
    vec4 small = noise4(q * 1.1 + vec2(u_time * 0.05, 0.0) * float(material == M_TERRAIN));
    vec2 uv = (p.xy - u_ground_rect.xy) * u_ground_rect.z;
    vec4 g = texture(u_ground, uv);
    vec3 albedo;
    if (material == M_TERRAIN) {
        float tint = g.g, variant = g.b, marking = g.a;
        cls = int(g.r * 255.0 + 0.5);
        if (any(lessThan(uv, vec2(0.0))) || any(greaterThan(uv, vec2(1.0)))) {
            // the countryside skirt around the tile: large grass and bare-ground fields
            vec2 field = floor(p.xy / 70.0);
            cls = hash12(field) < 0.3 ? BARE_GROUND : GRASS;
            tint = hash12(field + 3.1);
            variant = hash12(field + 7.7);
            marking = 0.0;
        }
        albedo = ground_albedo(cls, p, tint, variant, marking, big, small, spec, n, is_water);
    } else {
        albedo = object_albedo(material, p, v_color.rgb, v_attr.z, big, small, spec, n);
    }
    vec3 V = normalize(u_camera_pos - p);
    float vis = sun_visibility(normalize(v_normal));
    float ndl = max(dot(n, u_sun_dir), 0.0);
    vec3 color = albedo * (u_sun_color * ndl * vis + u_ambient * (0.6 + 0.4 * n.z));
    if (spec > 0.0) {
        vec3 H = normalize(u_sun_dir + V);
        color += u_sun_color * vis * spec * pow(max(dot(n, H), 0.0), is_water ? 200.0 : 40.0);
    }
    if (is_water) {
        float fresnel = 0.03 + 0.97 * pow(1.0 - max(dot(n, V), 0.0), 5.0);
        color = mix(color, sky_gradient(reflect(-V, n)), clamp(fresnel, 0.0, 0.85));
    }
    float dist = length(u_camera_pos - p);
    color = mix(color, u_sky_horizon, 1.0 - exp(-dist * u_haze_density));
    o_rgb = vec4(clamp(color, 0.0, 1.0), 1.0);
    o_label = float(cls) / 255.0;
    o_depth = v_depth;
    o_rgb_obstructed = o_rgb;
    o_depth_obstructed = v_depth;
    o_mask = 0.0;
}
"""

# Sky: a full-screen triangle per view at the far plane, drawn after the scene with depth test <=, so only
# pixels that nothing covers are shaded. The ray of each pixel comes from the inverse intrinsics and the
# camera rotation, so the sky matches the scene's projection exactly.
SKY_VERTEX = """
#version 330 core
void main() {
    vec2 p = vec2((gl_VertexID & 1) * 4.0 - 1.0, (gl_VertexID & 2) * 2.0 - 1.0);
    gl_Position = vec4(p, 1.0, 1.0);
}
"""

SKY_FRAGMENT = "#version 330 core\n" + _DEFINES + _NOISE + _LIGHT_UNIFORMS + """
uniform vec2 u_viewport_origin;   // pixel offset of this view in the atlas
uniform vec4 u_intrinsics;        // fx, fy, cx, cy
uniform mat3 u_cam_to_world;
layout(location = 0) out vec4 o_rgb;
layout(location = 1) out float o_label;
layout(location = 2) out float o_depth;
layout(location = 3) out vec4 o_rgb_obstructed;
layout(location = 4) out float o_depth_obstructed;
layout(location = 5) out float o_mask;
void main() {
    vec2 uv = gl_FragCoord.xy - 0.5 - u_viewport_origin;   // (u, v): the atlas rows run with v
    vec3 ray = normalize(u_cam_to_world * vec3((uv - u_intrinsics.zw) / u_intrinsics.xy, 1.0));
    vec3 c = u_sky_horizon;
    if (ray.z > 0.0) {
        c = sky_gradient(ray);
        vec4 q = noise4(ray.xy / max(ray.z, 0.02) * 2.5 + vec2(u_time * 0.02, 0.0));  // a cloud layer
        float cloud = smoothstep(1.0 - u_cloud_cover, 1.1 - 0.5 * u_cloud_cover, q.r * 0.8 + q.b * 0.3);
        c = mix(c, vec3(0.93, 0.94, 0.96) * (0.75 + 0.25 * max(dot(ray, u_sun_dir), 0.0)),
                cloud * smoothstep(0.02, 0.2, ray.z));
    }
    o_rgb = vec4(clamp(c, 0.0, 1.0), 1.0);
    o_label = float(SKY) / 255.0;
    o_depth = uintBitsToFloat(0x7f800000u);                // +inf: nothing hit (REP 118)
    o_rgb_obstructed = o_rgb;
    o_depth_obstructed = o_depth;
    o_mask = 0.0;
}
"""

# Obstructions: same vertex stage, drawn into (RGB with obstructions, depth with obstructions, mask).
OBSTRUCTION_FRAGMENT = "#version 330 core\n" + _DEFINES + _NOISE + _LIGHT_UNIFORMS + _OBJECT_MATERIALS + """
in vec3 v_world;
in vec3 v_normal;
in float v_depth;
in vec3 v_light;
flat in vec4 v_color;
flat in vec4 v_attr;
layout(location = 0) out vec4 o_rgb_obstructed;
layout(location = 1) out float o_depth_obstructed;
layout(location = 2) out float o_mask;
void main() {
    int material = int(v_attr.y * 255.0 + 0.5);
    vec3 p = v_world;
    vec3 n = normalize(v_normal);
    if (!gl_FrontFacing) n = -n;                            // thin shapes (wings, leaves) are two-sided
    float spec = 0.0;
    // obstructions are close to the camera: finer noise than the scene's objects
    vec2 q = noise_coords(p * 8.0, v_attr.z);
    vec3 albedo = object_albedo(material, p, v_color.rgb, v_attr.z, noise4(q / 11.0), noise4(q * 1.1), spec, n);
    vec3 V = normalize(u_camera_pos - p);
    vec3 color = albedo * (u_sun_color * max(dot(n, u_sun_dir), 0.0) + u_ambient * (0.6 + 0.4 * n.z));
    vec3 H = normalize(u_sun_dir + V);
    color += u_sun_color * spec * pow(max(dot(n, H), 0.0), 60.0);
    o_rgb_obstructed = vec4(clamp(color, 0.0, 1.0), 1.0);
    o_depth_obstructed = v_depth;
    o_mask = 1.0;
}
"""

SHADOW_VERTEX = """
#version 330 core
uniform mat4 u_light;
in vec3 in_position;
void main() { gl_Position = u_light * vec4(in_position, 1.0); }
"""

SHADOW_FRAGMENT = """
#version 330 core
void main() {}
"""
