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
aerial perspective (haze) towards the horizon colour. The noise hash is arithmetic (no sin), so llvmpipe and
NVIDIA drivers give the same patterns.
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
float hash12(vec2 p) {                       // Dave Hoskins, "Hash without Sine"
    vec3 p3 = fract(vec3(p.xyx) * 0.1031);
    p3 += dot(p3, p3.yzx + 33.33);
    return fract((p3.x + p3.y) * p3.z);
}
float hash13(vec3 p3) {
    p3 = fract(p3 * 0.1031);
    p3 += dot(p3, p3.zyx + 31.32);
    return fract((p3.x + p3.y) * p3.z);
}
float vnoise(vec2 p) {
    vec2 i = floor(p), f = fract(p);
    vec2 u = f * f * (3.0 - 2.0 * f);
    return mix(mix(hash12(i), hash12(i + vec2(1, 0)), u.x), mix(hash12(i + vec2(0, 1)), hash12(i + vec2(1, 1)), u.x), u.y);
}
float vnoise3(vec3 p) {
    vec3 i = floor(p), f = fract(p);
    vec3 u = f * f * (3.0 - 2.0 * f);
    float a = mix(mix(hash13(i), hash13(i + vec3(1, 0, 0)), u.x), mix(hash13(i + vec3(0, 1, 0)), hash13(i + vec3(1, 1, 0)), u.x), u.y);
    float b = mix(mix(hash13(i + vec3(0, 0, 1)), hash13(i + vec3(1, 0, 1)), u.x), mix(hash13(i + vec3(0, 1, 1)), hash13(i + vec3(1, 1, 1)), u.x), u.y);
    return mix(a, b, u.z);
}
float fbm2(vec2 p) {                         // 3 octaves, about 0..1
    return (0.571 * vnoise(p) + 0.286 * vnoise(p * 2.03 + 17.1) + 0.143 * vnoise(p * 4.01 + 3.7));
}
float fbm3(vec3 p) {
    return (0.571 * vnoise3(p) + 0.286 * vnoise3(p * 2.03 + 17.1) + 0.143 * vnoise3(p * 4.01 + 3.7));
}
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

vec3 sky_color(vec3 d) {
    float e = clamp(d.z, 0.0, 1.0);
    vec3 c = mix(u_sky_horizon, u_sky_zenith, sqrt(e));
    float s = max(dot(d, u_sun_dir), 0.0);
    c += u_sun_color * (pow(s, 600.0) * 3.0 + pow(s, 10.0) * 0.12);
    if (d.z > 0.02) {                        // clouds on a plane 1 km up
        vec2 q = d.xy / d.z * 1.0 + vec2(u_time * 0.01, 0.0);
        float cloud = smoothstep(1.0 - u_cloud_cover, 1.05 - 0.4 * u_cloud_cover, fbm2(q * 1.3));
        c = mix(c, vec3(0.93, 0.94, 0.96) * (0.75 + 0.25 * s), cloud * smoothstep(0.02, 0.2, d.z));
    }
    return c;
}
"""

_OBJECT_MATERIALS = """
vec3 object_albedo(int material, vec3 p, vec3 base, float ra, inout float spec, inout vec3 n) {
    if (material == M_WALL) {
        vec3 c = base * (0.85 + 0.2 * fbm3(p * 0.7));
        if (abs(n.z) < 0.5) {
            vec2 tangent = normalize(vec2(-n.y, n.x));
            float s = dot(p.xy, tangent) / (2.6 + ra) ;
            float h = (p.z + ra * 3.0) / 3.0;
            float window = step(0.3, fract(s)) * step(fract(s), 0.72) * step(0.35, fract(h)) * step(fract(h), 0.78);
            c = mix(c, vec3(0.12, 0.15, 0.2) + 0.12 * vnoise(p.xy * 0.5 + p.z), window);
            spec = window * 0.4;
        }
        return c;
    }
    if (material == M_ROOF_FLAT) {
        vec3 c = base * (0.8 + 0.3 * fbm2(p.xy * 0.7) + 0.1 * (vnoise(p.xy * 6.0) - 0.5));
        vec2 cell = floor(p.xy / 3.0);
        vec2 f = fract(p.xy / 3.0);
        if (hash12(cell + ra * 50.0) < 0.12 && all(greaterThan(f, vec2(0.25))) && all(lessThan(f, vec2(0.75))))
            c = vec3(0.62, 0.63, 0.64) * (0.9 + 0.2 * hash12(cell));                 // vents and units
        return c;
    }
    if (material == M_ROOF_TILED) {
        float rows = step(0.5, fract(p.z * 3.2));
        return base * (0.8 + 0.12 * rows + 0.2 * fbm2(p.xy * 1.5)) * (0.92 + 0.16 * hash12(floor(p.xy * 2.0)));
    }
    if (material == M_CROWN) {
        float leaves = fbm3(p * 1.4 + ra * 10.0);
        vec3 g = vec3(vnoise3(p * 2.1 + 1.0), vnoise3(p * 2.1 + 7.0), vnoise3(p * 2.1 + 13.0)) - 0.5;
        n = normalize(n + 0.9 * g);                                                      // clumps
        return base * (0.55 + 0.75 * leaves);
    }
    if (material == M_TRUNK) return base * (0.75 + 0.4 * vnoise3(p * vec3(6.0, 6.0, 1.5)));
    if (material == M_CAR_BODY) { spec = 0.5; return base * (0.9 + 0.1 * vnoise3(p * 3.0)); }
    if (material == M_CAR_GLASS) {
        if (n.z > 0.7) { spec = 0.5; return base; }
        spec = 0.8;
        return vec3(0.06, 0.08, 0.1);
    }
    if (material == M_GLOSSY) { spec = 1.0; return base * (0.92 + 0.08 * vnoise3(p * 4.0)); }
    // M_MATTE (obstructions): streaky feathers, bark, leaves
    return base * (0.6 + 0.6 * fbm3(p * vec3(9.0, 9.0, 3.0) + ra * 20.0));
}
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
    vec3 s = v_light;
    if (any(lessThan(s, vec3(0.0))) || any(greaterThan(s, vec3(1.0)))) return 1.0;
    float bias = u_shadow_texel * (1.5 + 3.0 * (1.0 - abs(dot(n, u_sun_dir))));
    float t = u_shadow_texel;
    float v = texture(u_shadow, vec3(s.xy + vec2(-0.5, -0.5) * t, s.z - bias))
            + texture(u_shadow, vec3(s.xy + vec2(0.5, -0.5) * t, s.z - bias))
            + texture(u_shadow, vec3(s.xy + vec2(-0.5, 0.5) * t, s.z - bias))
            + texture(u_shadow, vec3(s.xy + vec2(0.5, 0.5) * t, s.z - bias));
    return v * 0.25;
}

vec3 ground_albedo(int cls, vec3 p, float tint, float variant, float marking, inout float spec, inout vec3 n,
                   inout bool is_water) {
    float coarse = fbm2(p.xy * 0.09);
    float fine = vnoise(p.xy * 5.0);
    float stripe_angle = variant * 6.2832;
    vec2 stripe_dir = vec2(cos(stripe_angle), sin(stripe_angle));
    if (cls == GRASS) {
        vec3 c = mix(u_grass_lush, u_grass_dry, clamp(tint * 0.75 + (coarse - 0.5) * 0.6, 0.0, 1.0));
        c *= 0.78 + 0.4 * fbm2(p.xy * 0.6) + 0.12 * (fine - 0.5);
        if (variant < 0.35) c *= 0.93 + 0.07 * sign(sin(dot(p.xy, stripe_dir) * 1.2));   // mowing stripes
        return c;
    }
    if (cls == BARE_GROUND) {
        vec3 c = mix(u_soil_dark, u_soil_light, clamp(tint + (coarse - 0.5) * 0.5, 0.0, 1.0));
        c *= 0.8 + 0.35 * fbm2(p.xy * 0.8) + 0.15 * (fine - 0.5);
        if (variant > 0.5) c *= 0.86 + 0.14 * sin(dot(p.xy, stripe_dir) * 5.2);          // furrows
        c = mix(c, u_grass_dry, 0.35 * smoothstep(0.55, 0.8, fbm2(p.xy * 0.35 + 9.0))); // weeds
        return c;
    }
    if (cls == ROAD) {
        if (variant > 0.5) {                                                             // dirt track
            vec3 c = u_dirt_road * (0.82 + 0.3 * fbm2(p.xy * 0.9) + 0.15 * (fine - 0.5));
            return mix(c, u_soil_dark, 0.25 * smoothstep(0.5, 0.8, vnoise(p.xy * 0.7)));
        }
        vec3 c = u_asphalt * (0.75 + 0.5 * tint) * (0.85 + 0.25 * fbm2(p.xy * 0.35) + 0.1 * (fine - 0.5));
        c *= 1.0 - 0.25 * smoothstep(0.72, 0.8, fbm2(p.xy * 0.25 + 3.0));              // repair patches
        spec = 0.08;
        return mix(c, vec3(0.88, 0.88, 0.82), marking);
    }
    // water: tint encodes depth below the surface (0 at the shore)
    is_water = true;
    float t = u_time;
    vec2 q = p.xy * 0.35;
    float dx = vnoise(q + vec2(0.1, 0.0) + t * 0.3) - vnoise(q - vec2(0.1, 0.0) + t * 0.3);
    float dy = vnoise(q + vec2(0.0, 0.1) - t * 0.25) - vnoise(q - vec2(0.0, 0.1) - t * 0.25);
    n = normalize(vec3(-dx * 1.2, -dy * 1.2, 1.0));
    spec = 0.9;
    return mix(u_water_shallow, u_water_deep, smoothstep(0.0, 0.7, tint)) * (0.9 + 0.2 * fbm2(p.xy * 0.05));
}

void main() {
    int material = int(v_attr.y * 255.0 + 0.5);
    int cls = int(v_attr.x * 255.0 + 0.5);
    vec3 p = v_world;
    vec3 n = normalize(v_normal);
    float spec = 0.0;
    bool is_water = false;
    vec3 albedo;
    if (material == M_TERRAIN) {
        vec2 uv = (p.xy - u_ground_rect.xy) * u_ground_rect.z;
        float tint, variant, marking;
        if (any(lessThan(uv, vec2(0.0))) || any(greaterThan(uv, vec2(1.0)))) {
            // the countryside skirt around the tile: large grass and bare-ground fields
            vec2 field = floor(p.xy / 70.0 + 0.3 * vec2(vnoise(p.xy / 90.0), vnoise(p.xy / 90.0 + 5.0)));
            cls = hash12(field) < 0.3 ? BARE_GROUND : GRASS;
            tint = hash12(field + 3.1);
            variant = hash12(field + 7.7);
            marking = 0.0;
        } else {
            vec4 g = texture(u_ground, uv);
            cls = int(g.r * 255.0 + 0.5);
            tint = g.g;
            variant = g.b;
            marking = g.a;
        }
        albedo = ground_albedo(cls, p, tint, variant, marking, spec, n, is_water);
    } else {
        albedo = object_albedo(material, p, v_color.rgb, v_attr.z, spec, n);
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
        color = mix(color, sky_color(reflect(-V, n)), clamp(fresnel, 0.0, 0.85));
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

# Sky: a full-screen triangle per view, drawn first without depth test. The ray of each pixel comes from
# the inverse intrinsics and the camera rotation, so the sky matches the scene's projection exactly.
SKY_VERTEX = """
#version 330 core
void main() {
    vec2 p = vec2((gl_VertexID & 1) * 4.0 - 1.0, (gl_VertexID & 2) * 2.0 - 1.0);
    gl_Position = vec4(p, 0.0, 1.0);
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
    vec3 c = ray.z > 0.0 ? sky_color(ray) : u_sky_horizon;
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
    vec3 albedo = object_albedo(material, p, v_color.rgb, v_attr.z, spec, n);
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
