"""Synthetic street scenes: the Segmentation2City task (label-map video -> RGB video).

Why synthetic: Cityscapes sequences are 324 GB behind a licence, while the methods here only
need paired (label map, RGB) *video* with the properties that make video translation hard and
make shortcuts pay: textures inside a class (facades, asphalt, foliage) that a generator must
synthesise, per-clip lighting, camera motion with parallax, objects that enter, leave and
occlude, and long static stretches. Every clip is a pure function of its seed, rendered frame
by frame (a 10-minute clip never sits in memory), and any frame can be rendered on its own
(``StreetScene.frame(k)``), so datasets can draw (frame k, frame k + d) pairs directly.

The world (metres): ``x`` across the street (right positive), ``y`` up, ``z`` along the street.
A four-lane road (|x| < 7, lanes 3.5 m) between sidewalks (7 < |x| < 10), building facades on
the planes |x| = 10 with gaps that show the buildings' side walls and grass lots, trees on the
sidewalk edge, cars on the lanes (oncoming on the left), pedestrians on the sidewalks, a distant
skyline and a cloudy sky at infinity. The camera (pinhole, 90 degree horizontal field of view,
horizon at 44 % of the height) drives along the right inner lane with gentle sway and pan, or
stands still on a sidewalk (``fixed_camera=True``). The background is ray-cast analytically per
pixel (ground plane, facade planes, side walls: only per-row / per-column maths and a few
``cv2.remap`` texture look-ups); objects are drawn with OpenCV polygons, far to near. Periodic
patterns (lane dashes, windows, paving) are box-filtered analytically over each pixel's
footprint, so distant detail fades to its mean instead of shimmering from frame to frame.

Label IDs (``LABEL_NAMES[i]``, colours in ``PALETTE``, Cityscapes colours where one exists):

====  ============  ===============
 ID   class         palette (RGB)
====  ============  ===============
 0    road          128, 64, 128
 1    sidewalk      244, 35, 232
 2    building      70, 70, 70
 3    vegetation    107, 142, 35
 4    sky           70, 130, 180
 5    car           0, 0, 142
 6    person        220, 20, 60
 7    lane_marking  255, 255, 255
 8    terrain       152, 251, 152
====  ============  ===============
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from fastv2v.errors import UserError

__all__ = [
    "LABEL_NAMES",
    "NUM_CLASSES",
    "PALETTE",
    "ROAD",
    "SIDEWALK",
    "BUILDING",
    "VEGETATION",
    "SKY",
    "CAR",
    "PERSON",
    "LANE_MARKING",
    "TERRAIN",
    "SceneConfig",
    "StreetScene",
    "render_clip",
    "write_clip",
    "colorize_labels",
    "derive_seed",
]

ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, CAR, PERSON, LANE_MARKING, TERRAIN = range(9)
LABEL_NAMES = ("road", "sidewalk", "building", "vegetation", "sky", "car", "person", "lane_marking", "terrain")
NUM_CLASSES = len(LABEL_NAMES)
PALETTE = np.array(
    [
        (128, 64, 128),
        (244, 35, 232),
        (70, 70, 70),
        (107, 142, 35),
        (70, 130, 180),
        (0, 0, 142),
        (220, 20, 60),
        (255, 255, 255),
        (152, 251, 152),
    ],
    dtype=np.uint8,
)


def colorize_labels(labels: np.ndarray) -> np.ndarray:
    """Label IDs (H x W integers) -> RGB uint8 H x W x 3 with ``PALETTE``; unknown IDs are black."""
    labels = np.asarray(labels)
    table = np.zeros((256, 3), np.uint8)
    table[:NUM_CLASSES] = PALETTE
    return table[np.clip(labels, 0, 255).astype(np.intp)]


@dataclass(frozen=True)
class SceneConfig:
    """One synthetic clip. The same config always renders the same frames, bit for bit.

    ``cut_at``: frame index (or indices) where the scene cuts to an unrelated street (a new
    seed derived from ``seed``), for testing adaptive key frames. ``camera_speed`` in m/s
    (None: drawn per clip, 3-8 m/s; ignored with ``fixed_camera``). ``traffic`` scales how many
    cars and pedestrians there are.
    """

    height: int = 128
    width: int = 256
    frames: int = 60
    seed: int = 0
    fps: float = 15.0
    fixed_camera: bool = False
    cut_at: int | Sequence[int] | None = None
    camera_speed: float | None = None
    traffic: float = 1.0

    def cuts(self) -> tuple[int, ...]:
        """Sorted cut frames (> 0)."""
        if self.cut_at is None:
            return ()
        cuts = (self.cut_at,) if isinstance(self.cut_at, (int, np.integer)) else tuple(self.cut_at)
        return tuple(sorted({int(c) for c in cuts if int(c) > 0}))


# ---------------------------------------------------------------------------------------------
# geometry and look constants

_LANE = 3.5
_ROAD_HALF = 7.0
_WALL_X = 10.0
_BUILDING_DEPTH = 14.0
_HORIZON = 0.44  # horizon row as a fraction of the height (the camera has no pitch)
_T_FAR = 150.0  # facades end here; beyond: the skyline at infinity
_NEAR = 0.3
_CHUNK = 400.0  # the static world is generated in chunks of this many metres along z
_CAMERA_LANE_X = 1.75

_SKIES = (  # (horizon, zenith, cloud) colours
    ((200, 220, 235), (70, 130, 210), (245, 245, 248)),
    ((215, 215, 210), (140, 170, 200), (235, 235, 235)),
    ((196, 198, 202), (150, 156, 168), (215, 216, 220)),
    ((240, 195, 155), (90, 110, 170), (250, 215, 190)),
)
_FACADES = np.array(
    [
        (190, 170, 140), (160, 82, 62), (150, 150, 148), (222, 212, 192), (122, 96, 76),
        (170, 184, 194), (204, 164, 122), (110, 110, 116), (230, 226, 216), (186, 122, 96),
    ],
    np.float32,
)
_SHOPS = np.array([(60, 60, 64), (120, 40, 40), (40, 70, 60), (90, 75, 60), (200, 200, 195)], np.float32)
_CARS = np.array(
    [
        (232, 232, 232), (26, 26, 30), (170, 172, 176), (100, 102, 106), (165, 22, 28), (32, 62, 140),
        (22, 32, 72), (34, 82, 52), (228, 188, 34), (190, 176, 142), (206, 100, 32),
    ],
    np.float32,
)
_SKINS = np.array([(236, 200, 170), (200, 150, 112), (142, 96, 66), (92, 62, 42)], np.float32)
_CLOTHES = np.array(
    [
        (30, 30, 36), (60, 70, 110), (150, 40, 40), (200, 200, 200), (90, 110, 70), (140, 120, 90),
        (40, 90, 150), (210, 170, 60), (110, 60, 120), (80, 80, 80), (230, 120, 100),
    ],
    np.float32,
)
_HAIR = np.array([(30, 22, 18), (80, 52, 30), (190, 160, 100), (150, 150, 150)], np.float32)
_FOLIAGE = np.array([(58, 104, 40), (78, 124, 48), (48, 86, 44), (96, 132, 56)], np.float32)


# ---------------------------------------------------------------------------------------------
# small deterministic helpers


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _hash(*keys) -> np.ndarray:
    """Stateless hash of integers / integer arrays (broadcast) -> uint64 array."""
    with np.errstate(over="ignore"):
        h = np.full((), 0x9E3779B97F4A7C15, np.uint64)
        for k in keys:
            k = np.asarray(k, dtype=np.int64).astype(np.uint64)
            h = _mix(h ^ k + np.uint64(0x632BE59BD9B4E019))
    return np.atleast_1d(h)


def _u01(*keys) -> np.ndarray:
    """Uniform [0, 1) floats from a stateless hash: random access without sequential RNG state."""
    return (_hash(*keys) >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def derive_seed(seed: int, tag: int) -> int:
    """A new seed for a sub-stream (a scene cut, a dataset worker) that never equals ``seed``."""
    return int(_hash(seed, tag, 0x5EED)[0] >> np.uint64(33))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Tileable value noise in [-1, 1] (float32 size x size), ``cells`` features per side."""
    grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    tiled = np.tile(grid, (3, 3))
    up = cv2.resize(tiled, (3 * size, 3 * size), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(up[size : 2 * size, size : 2 * size])


def _wrap(x: np.ndarray, period) -> np.ndarray:
    """``x mod period`` (floor form: many times faster than ``np.mod`` on float arrays)."""
    return x - np.floor(x * (1.0 / period) if np.isscalar(period) else x / period) * period


def _box_stripes(s: np.ndarray, period, start, length, footprint, floor=None) -> np.ndarray:
    """Fraction of the pixel footprint [s - fp/2, s + fp/2] covered by the periodic intervals
    [start + k * period, start + k * period + length]: an exact box filter, so stripes far away
    (footprint >> period) fade to their duty cycle instead of aliasing. ``floor``: ``floor(s)``
    when the caller has it already and ``period`` is 1."""
    half = np.maximum(footprint, 1e-3) * 0.5
    # work on small numbers: keeps float32 precise far down the street
    s = s - floor - start if floor is not None else _wrap(s - start, period)

    def integral(x):
        k = np.floor(x / period) if not (np.isscalar(period) and period == 1.0) else np.floor(x)
        return k * length + np.minimum(x - k * period, length)

    return (integral(s + half) - integral(s - half)) / (2 * half)


def _pts(uv: np.ndarray) -> np.ndarray:
    """Screen points (n x 2) -> int32 with 4 fractional bits (the ``shift=4`` of OpenCV drawing)."""
    return np.round(uv * 16.0).astype(np.int32)


_SHIFT = 4
# building properties of a column that hits no wall (safe divisors; height 0 hides it)
_NO_BUILDING = np.array([0, 0, 0, 0, 3, 1, 3, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0], np.float64)


# ---------------------------------------------------------------------------------------------


class _Street:
    """One continuous shot (no cuts): clip parameters, static world, traffic, renderer."""

    def __init__(self, seed: int, height: int, width: int, fps: float, fixed_camera: bool,
                 camera_speed: float | None, traffic: float):
        self.seed, self.h, self.w, self.fps = int(seed), height, width, float(fps)
        self.fixed = fixed_camera
        rng = np.random.default_rng([self.seed & 0xFFFFFFFFFFFF, 0xC11B])
        H, W = height, width
        self.f = W / 2.0
        self.cx, self.cy = W / 2.0, _HORIZON * H
        self._dxc = ((np.arange(W) + 0.5 - self.cx) / self.f).astype(np.float32)
        self._dyc = (-(np.arange(H) + 0.5 - self.cy) / self.f).astype(np.float32)
        self._vh = int(np.sum(self._dyc > 0))  # rows above the horizon

        # lighting and atmosphere: per clip, so RGB is not a fixed function of the labels
        sky_i = int(rng.integers(len(_SKIES)))
        sky = _SKIES[sky_i]
        jit = rng.uniform(-10, 10, 3)
        self.sky_h = np.clip(np.array(sky[0]) + jit, 0, 255).astype(np.float32)
        self.sky_z = np.clip(np.array(sky[1]) + jit, 0, 255).astype(np.float32)
        self.cloud_col = np.array(sky[2], np.float32)
        self.cloudiness = float(rng.uniform(0.0, 1.0))
        evening = sky_i == 3
        self.light = (rng.uniform(0.78, 1.12) * (1 + rng.uniform(-0.06, 0.06, 3))).astype(np.float32)
        self.fog_col = (0.7 * self.sky_h + 0.3 * np.array([150, 150, 150])).astype(np.float32)
        self.fog_d = float(rng.uniform(70, 180))
        self.sun = float(rng.choice([-1.0, 1.0]))  # the side the sun shines from
        self.sun_contrast = float(rng.uniform(0.12, 0.3))
        asphalt = rng.uniform(68, 100) * (1 + rng.uniform(-0.03, 0.03, 3))
        self.ground_cols = np.stack(
            [asphalt, np.array([170, 166, 158]) * rng.uniform(0.85, 1.1),
             np.array([88, 128, 58]) * rng.uniform(0.8, 1.15)]
        ).astype(np.float32)
        self.ground_amp = np.array([0.16, 0.1, 0.22], np.float32)
        self.paint = np.array([236, 236, 228], np.float32)
        self.centre_paint = np.array([230, 190, 60], np.float32) if rng.random() < 0.3 else self.paint
        self.tree_density = float(rng.uniform(0.2, 1.0))
        self.building_style = rng.permutation(len(_FACADES))[: rng.integers(4, 9)]

        # textures, once per clip
        self.noise_fine = _smooth_noise(rng, 64, 32)
        self.noise_coarse = _smooth_noise(rng, 64, 8)
        cloud = _smooth_noise(rng, 128, 6) * 0.7 + _smooth_noise(rng, 128, 16) * 0.3
        self.cloud = np.clip((cloud + 0.45 - 0.8 * (1 - self.cloudiness)) * 2.5, 0, 1).astype(np.float32)
        # per window: glass brightness factor, or -1 for a lit window (flat, for one np.take)
        win = 1 + 0.25 * rng.uniform(-1, 1, 64 * 64)
        win[rng.random(64 * 64) < (0.25 if evening else 0.03)] = -1
        self.windows = win.astype(np.float32)
        n_az = 1440
        sky_e = np.zeros(n_az, np.float32)
        sky_v = np.zeros(n_az, np.float32)
        i = 0
        while i < n_az:  # blocks of distant buildings, 0.5..3 degrees wide
            n = int(rng.integers(2, 12))
            sky_e[i : i + n] = rng.uniform(0.004, 0.045) if rng.random() < 0.85 else 0.0
            sky_v[i : i + n] = rng.uniform(-1, 1)
            i += n
        self.skyline_e = sky_e
        far = 0.55 * self.fog_col + 0.45 * np.array([120, 124, 130], np.float32)
        self.skyline_col = (far[None, :] * (1 + 0.06 * sky_v)[:, None]).astype(np.float32)  # n_az x 3

        # camera path
        if fixed_camera:
            side = float(rng.choice([-1.0, 1.0]))
            self.cam_x0 = side * float(rng.uniform(9.3, 9.7))  # on a sidewalk, by the facades
            self.cam_h = float(rng.uniform(1.8, 3.5))
            self.yaw0 = -side * float(rng.uniform(0.12, 0.45))
            self.speed = self.sway = self.yaw_amp = self.surge = 0.0
        else:
            self.cam_x0 = _CAMERA_LANE_X
            self.cam_h = float(rng.uniform(1.4, 1.8))
            self.yaw0 = float(rng.uniform(-0.08, 0.08))
            self.speed = float(camera_speed) if camera_speed is not None else float(rng.uniform(3, 8))
            self.sway = float(rng.uniform(0, 0.5))
            self.yaw_amp = float(rng.uniform(0, 0.2))
            self.surge = float(rng.uniform(0, 0.4)) * self.speed
        self.cam_w = rng.uniform(0.2, 0.6, 3)  # angular frequencies (rad/s) of sway, pan, surge
        self.cam_p = rng.uniform(0, 2 * math.pi, 3)

        # traffic: lanes of cars and of pedestrians (x, speed, spacing, phase, occupancy)
        dens = max(float(traffic), 1e-3)
        self.car_lanes = []
        for x in (-5.25, -1.75, 1.75, 5.25):
            if not fixed_camera and x == _CAMERA_LANE_X:
                continue  # the camera drives here; at most a lead car
            v = float(rng.uniform(6, 12)) * (-1 if x < 0 else 1)
            if x > 0 and not fixed_camera:
                v = float(rng.uniform(0.3, 1.6)) * max(self.speed, 2.0)  # overtaking and overtaken
            gap = max(9.0, float(rng.uniform(14, 40)) / dens)  # jitter is +-20 %: cars never overlap
            self.car_lanes.append((x, v, gap, float(rng.uniform(0, gap)), float(rng.uniform(0.45, 0.85))))
        self.lead = None
        if not fixed_camera and rng.random() < 0.5 * min(dens, 1.0):
            self.lead = (float(rng.uniform(10, 30)), float(rng.uniform(0, 4)))
        self.ped_lanes = []
        for x in (-9.0, -7.7, 7.7, 9.0):
            v = float(rng.uniform(0.9, 1.6)) * float(rng.choice([-1.0, 1.0]))
            if fixed_camera and abs(x - self.cam_x0) < 1:
                continue  # nobody walks through a fixed camera
            gap = max(1.5, float(rng.uniform(10, 40)) / dens)
            self.ped_lanes.append((x, v, gap, float(rng.uniform(0, gap)), float(rng.uniform(0.3, 0.7))))

        self._chunks: OrderedDict = OrderedDict()
        self._models: OrderedDict = OrderedDict()
        self._bg_cache: tuple | None = None

    # --- camera ------------------------------------------------------------------------------

    def camera(self, t: float) -> tuple[float, float, float, float]:
        """(x, z, yaw, height) at time ``t`` seconds: smooth, so motion is learnable."""
        w, p = self.cam_w, self.cam_p
        x = self.cam_x0 + self.sway * math.sin(w[0] * t + p[0])
        yaw = self.yaw0 + self.yaw_amp * math.sin(w[1] * t + p[1])
        z = self.speed * t + self.surge / w[2] * (math.sin(w[2] * t + p[2]) - math.sin(p[2]))
        return x, z, yaw, self.cam_h

    def _project(self, cam, pts: np.ndarray):
        """World points (..., 3) -> screen u, v and depth along the optical axis."""
        x_c, z_c, yaw, h_c = cam
        cs, sn = math.cos(yaw), math.sin(yaw)
        X, Y, Z = pts[..., 0] - x_c, pts[..., 1] - h_c, pts[..., 2] - z_c
        zc = X * sn + Z * cs
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = self.f / zc
            u = self.cx + (X * cs - Z * sn) * inv
            v = self.cy - Y * inv
        return u, v, zc

    # --- static world ---------------------------------------------------------------------------

    def _chunk(self, side: int, index: int) -> dict:
        """Buildings and trees of one side (0 left, 1 right) of one chunk of street."""
        key = (side, index)
        if key in self._chunks:
            self._chunks.move_to_end(key)
            return self._chunks[key]
        rng = np.random.default_rng([self.seed & 0xFFFFFFFFFFFF, 0xB1D, side, index & 0xFFFFFFFF])
        z0 = index * _CHUNK
        n = int(_CHUNK / 8) + 2  # enough buildings for a chunk, drawn at once (vectorised)
        width = rng.uniform(8, 32, n)
        gap = np.where(rng.random(n) < 0.35, rng.uniform(3, 14, n), rng.uniform(0, 0.2, n))
        start = z0 + rng.uniform(0, 6) + np.concatenate([[0.0], np.cumsum(width + gap)[:-1]])
        end = np.minimum(start + width, z0 + _CHUNK - 0.5)
        keep = start < z0 + _CHUNK - 1.0
        style = self.building_style[rng.integers(len(self.building_style), size=n)]
        col = _FACADES[style] * rng.uniform(0.88, 1.1, (n, 1)) + rng.uniform(-8, 8, (n, 3))
        floor_h = rng.uniform(2.9, 3.6, n)
        height = floor_h * rng.integers(2, 9, n) + rng.uniform(0.6, 1.5, n) + 3.8
        win_p = rng.uniform(2.2, 3.6, n)
        glass = np.array([44, 54, 66]) * rng.uniform(0.8, 1.5, (n, 1)) + rng.uniform(-6, 6, (n, 3))
        shop = _SHOPS[rng.integers(len(_SHOPS), size=n)] * rng.uniform(0.85, 1.15, (n, 1))
        b = np.column_stack(
            [start, end, height, col, win_p, win_p * rng.uniform(0.35, 0.6, n), floor_h,
             floor_h * rng.uniform(0.4, 0.6, n), rng.uniform(3.4, 4.4, n), glass, shop,
             rng.uniform(0.03, 0.09, n), index * 1000 + np.arange(n)]
        )[keep]
        m = int(_CHUNK / 9) + 2  # trees on the kerb, 9..22 m apart
        tz = z0 + rng.uniform(0, 10) + np.concatenate([[0.0], np.cumsum(rng.uniform(9, 22, m))[:-1]])
        trees = np.column_stack(
            [tz, rng.uniform(1.8, 3.2, m), rng.uniform(1.4, 2.8, m), rng.integers(len(_FOLIAGE), size=m),
             rng.uniform(0.8, 1.15, m), rng.uniform(0, 1, (m, 9))]
        )[(tz < z0 + _CHUNK) & (rng.random(m) < self.tree_density)]
        chunk = {"b": b, "trees": trees}
        self._chunks[key] = chunk
        while len(self._chunks) > 16:
            self._chunks.popitem(last=False)
        return chunk

    # --- background: sky, ground, facades (channel planes, float, unlit) ---------------------

    def _background(self, cam) -> tuple[np.ndarray, np.ndarray]:
        """Unlit float RGB planes (3 x H x W, 0..255 scale) and labels of everything static."""
        x_c, z_c, yaw, h_c = cam
        H, W, f, vh = self.h, self.w, self.f, self._vh
        cs, sn = math.cos(yaw), math.sin(yaw)
        dxc, dyc = self._dxc, self._dyc
        dxw = dxc * np.float32(cs) + np.float32(sn)
        dzw = np.float32(cs) - dxc * np.float32(sn)
        lab = np.empty((H, W), np.uint8)
        rgb = np.empty((3, H, W), np.float32)

        # sky at infinity: gradient, a perspective cloud layer, and the distant skyline
        if vh > 0:
            e = dyc[:vh]
            s = np.clip(e * 1.6, 0, 1)[:, None]
            dist = (np.float32(64.0 / 12.0) / np.maximum(e, 1e-3))[:, None]
            a = cv2.remap(self.cloud, _wrap(dxw[None, :] * dist, 128), _wrap(dzw[None, :] * dist, 128),
                          cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_WRAP)
            a *= np.clip(e * (0.9 / 0.12), 0, 0.9)[:, None]  # thin out toward the horizon
            grey = 1.0 - 0.25 * a  # thick cloud is greyer underneath
            az = np.mod(yaw + np.arctan(dxc), 2 * math.pi) * (len(self.skyline_e) / (2 * math.pi))
            ai = np.minimum(az.astype(np.intp), len(self.skyline_e) - 1)
            m = e[:, None] < self.skyline_e[ai][None, :]
            for c in range(3):
                g = self.sky_h[c] + s * (self.sky_z[c] - self.sky_h[c])
                rgb[c, :vh] = np.where(m, self.skyline_col[ai, c][None, :], g + a * (self.cloud_col[c] * grey - g))
            lab[:vh] = np.where(m, BUILDING, SKY)

        # ground plane: road, markings, sidewalk, grass behind the building line
        if vh < H:
            tg = (np.float32(h_c) / -dyc[vh:])[:, None]  # distance along the ray, per row
            gx = np.float32(x_c) + tg * dxw[None, :]
            gz = np.float32(z_c) + tg * dzw[None, :]
            ax = np.abs(gx)
            fx = tg / np.float32(f)
            fz = tg * tg / np.float32(f * h_c)
            mat = (ax >= _ROAD_HALF).view(np.uint8) + (ax >= _WALL_X).view(np.uint8)
            fine = cv2.remap(self.noise_fine, _wrap(gx * 20, 64), _wrap(gz * 20, 64), cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_WRAP)
            coarse = cv2.remap(self.noise_coarse, _wrap(gx * 1.4, 64), _wrap(gz * 1.4, 64), cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_WRAP)
            fade = np.clip(1.5 - fx * 20, 0, 1)  # fine grain fades once a pixel spans ~5 cm
            shade = 1 + self.ground_amp[mat] * (fine * fade + coarse) * np.float32(0.6)
            # patterns are evaluated only on the pixels that can show them (flat index lists)
            fxf, fzf = np.broadcast_to(fx, gx.shape).ravel(), np.broadcast_to(fz, gx.shape).ravel()
            gxf, gzf, axf, shf = gx.ravel(), gz.ravel(), ax.ravel(), shade.ravel()
            i = np.flatnonzero(mat == 0)
            shf[i] -= 0.07 * _box_stripes(gxf[i], 1.75, 0.625, 0.5, fxf[i])  # tyre tracks
            i = np.flatnonzero(mat == 1)
            tiles = np.maximum(_box_stripes(gxf[i], 1.0, -0.02, 0.04, fxf[i]),
                               _box_stripes(gzf[i], 1.0, -0.02, 0.04, fzf[i]))
            shf[i] = np.where(axf[i] < _ROAD_HALF + 0.25, np.float32(1.25), shf[i] - 0.22 * tiles)  # kerb, joints
            near_line = np.abs(gx - _LANE * np.round(gx * (1 / _LANE))) < 0.075 + 0.5 * fx
            i = np.flatnonzero(near_line & (ax < _ROAD_HALF - 1.5))
            paint = np.zeros(gx.shape, np.float32)
            pf = _box_stripes(gxf[i], _LANE, -0.075, 0.15, fxf[i])
            pf = np.where(axf[i] < 1.75, pf, pf * _box_stripes(gzf[i], 9.0, 0.0, 3.0, fzf[i]))  # dashed off-centre
            paint.ravel()[i] = pf
            centre = ax < 1.75
            fog = 1 - np.exp(-tg / self.fog_d)
            for c in range(3):
                col = self.ground_cols[mat, c] * shade
                col += paint * (np.where(centre, self.centre_paint[c], self.paint[c]) - col)
                rgb[c, vh:] = col + fog * (self.fog_col[c] - col)
            gl = _GROUND_LABELS[mat]
            gl[paint >= 0.5] = LANE_MARKING
            lab[vh:] = gl

        # facades (planes |x| = 10) and, through gaps, the side walls of the next building
        xw = np.where(dxw < 0, -_WALL_X, _WALL_X).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            tw = (xw - np.float32(x_c)) / dxw
        tw = np.where(np.isfinite(tw) & (tw > _NEAR), tw, np.inf).astype(np.float32)
        zw = z_c + tw.astype(np.float64) * dzw
        t_hit = np.full(W, np.inf, np.float32)
        u_hit = np.zeros(W, np.float32)
        props = np.tile(_NO_BUILDING, (W, 1))
        facade = np.zeros(W, bool)
        for side_i, side_cols in ((0, dxw < 0), (1, dxw > 0)):
            cols = np.nonzero(side_cols & (tw < _T_FAR))[0]
            if cols.size == 0:
                continue
            lo, hi = math.floor((z_c - 5) / _CHUNK), math.floor((z_c + _T_FAR + 40) / _CHUNK)
            b = np.concatenate([self._chunk(side_i, i)["b"] for i in range(lo, hi + 2)], 0)
            z = zw[cols]
            idx = np.clip(np.searchsorted(b[:, 0], z, side="right") - 1, 0, len(b) - 1)
            inside = (z >= b[idx, 0]) & (z < b[idx, 1])
            nxt = np.minimum(idx + (~inside & (z >= b[idx, 0])), len(b) - 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                ts = (b[nxt, 0] - z_c) / dzw[cols]  # where the ray meets the next building's side wall
            off = np.abs(x_c + ts * dxw[cols]) - _WALL_X
            side_hit = ~inside & (ts > _NEAR) & (off >= 0) & (off < _BUILDING_DEPTH) & (ts < _T_FAR)
            t_hit[cols] = np.where(inside, tw[cols], np.where(side_hit, ts, np.inf))
            u_hit[cols] = np.where(inside, z - b[idx, 0], off)
            props[cols] = b[np.where(inside, idx, nxt), 2:]
            facade[cols] = inside
        hit = np.isfinite(t_hit)
        if hit.any():
            c0, c1 = np.nonzero(hit)[0][[0, -1]]
            sl = slice(c0, c1 + 1)
            u, pr, fac = u_hit[sl], props[sl].astype(np.float32), facade[sl]
            t = np.where(hit[sl], t_hit[sl], np.float32(1e6))
            y = np.float32(h_c) + t[None, :] * dyc[:, None]  # height of the hit point, per pixel
            height = np.where(hit[sl], pr[:, 0], 0)
            m = (y >= 0) & (y < height[None, :])
            if m.any():
                win_p, win_w, floor_h, win_h, gf_h = pr[:, 4], pr[:, 5], pr[:, 6], pr[:, 7], pr[:, 8]
                amp, bid = pr[:, 15], pr[:, 16].astype(np.int32)
                w = y.shape[1]
                fu = np.minimum(np.abs(np.gradient(u)) if u.size > 1 else np.ones_like(u), 50)
                fy = t / np.float32(f)
                yf = y.ravel()
                # windows (upper floors) and shop windows (ground floor), evaluated only where they can be
                wu = _box_stripes(u, win_p, (win_p - win_w) * 0.5, win_w, fu) * fac
                iw = np.flatnonzero(m & (wu > 0)[None, :] & (y > gf_h[None, :]) & (y < height[None, :] - 0.9))
                cw = iw % w
                yn = yf[iw] / floor_h[cw]  # height in floors
                fl = np.floor(yn)
                cover = wu[cw] * _box_stripes(yn, 1.0, 0.3, win_h[cw] / floor_h[cw], fy[cw] / floor_h[cw], floor=fl)
                wc = (np.floor(u / win_p).astype(np.int32) * 7 + bid * 13) & 63
                var = np.take(self.windows, (fl.astype(np.int32) & 63) * 64 + wc[cw])  # < 0: a lit window
                su = _box_stripes(u, 5.0, 0.7, 3.6, fu) * fac
                ish = np.flatnonzero(m & (su > 0)[None, :] & (y > 0.5) & (y < gf_h[None, :] - 0.7))
                idx = np.concatenate([iw, ish])
                cols = idx % w
                cover = np.concatenate([cover, 0.9 * su[ish % w]]).astype(np.float32)
                var = np.concatenate([var, np.ones(ish.size, np.float32)])
                tex = cv2.remap(self.noise_fine, np.ascontiguousarray(np.broadcast_to(_wrap(u * 12, 64), y.shape)),
                                _wrap(y * 12, 64), cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
                # the sunlit facade, the facade in shade, the darker side walls; darker at street level
                sunlit = np.float32(1.05) if self.sun > 0 else np.float32(1 - self.sun_contrast)
                shaded = np.float32(1 - self.sun_contrast) if self.sun > 0 else np.float32(1.05)
                light = np.where(fac, np.where(xw[sl] < 0, sunlit, shaded), np.float32(0.78))
                s = light[None, :] * (1 + amp[None, :] * tex * np.clip(1.6 - fy * 12, 0, 1)[None, :])
                s *= 0.82 + 0.18 * np.clip(y * 0.2, 0, 1)
                s = np.where(y > height[None, :] - 0.5, s * np.float32(0.78), s)  # cornice
                s_w = s.ravel()[idx]
                lit = var < 0
                ground_floor = y < gf_h[None, :]
                fog = 1 - np.exp(-t / self.fog_d)[None, :]
                for c in range(3):
                    col = np.where(ground_floor, pr[:, 12 + c][None, :], pr[:, 1 + c][None, :]) * s
                    cf = col.ravel()
                    glass = np.where(lit, np.float32(_LIT_WINDOW[c]), pr[cols, 9 + c] * var * s_w)
                    cf[idx] += cover * (glass - cf[idx])
                    col += fog * (self.fog_col[c] - col)
                    rgb[c, :, sl] = np.where(m, col, rgb[c, :, sl])
                lab[:, sl] = np.where(m, BUILDING, lab[:, sl])
        return rgb, lab

    # --- objects: trees, cars, pedestrians -----------------------------------------------------

    def _slots(self, lanes, t: float, z_lo: float, z_hi: float, tag: int):
        """Objects in lanes: slot j of a lane sits at phase + j*gap + jitter + v*t (pure in t)."""
        out = []
        for li, (x, v, gap, phase, p) in enumerate(lanes):
            base = phase + v * t
            j = np.arange(math.floor((z_lo - base) / gap) - 1, math.ceil((z_hi - base) / gap) + 2)
            j = j[_u01(self.seed, tag, li, j) < p]
            z = base + j * gap + (_u01(self.seed, tag + 1, li, j) - 0.5) * 0.4 * gap
            sel = (z > z_lo) & (z < z_hi)
            out.extend((li, int(jj), x, float(zz), v) for jj, zz in zip(j[sel], z[sel]))
        return out

    def _collect(self, cam, t: float) -> list:
        """Every object near the view, sorted far to near: (depth, u, v, kind, x, z, data)."""
        x_c, z_c, yaw, h_c = cam
        z_lo, z_hi = z_c - 8, z_c + _T_FAR
        items = []
        for side_i, xs in ((0, -7.7), (1, 7.7)):  # trees (static)
            for ci in range(math.floor(z_lo / _CHUNK), math.floor(z_hi / _CHUNK) + 1):
                tr = self._chunk(side_i, ci)["trees"]
                for row in tr[(tr[:, 0] > z_lo) & (tr[:, 0] < z_hi)]:
                    if self.fixed and math.hypot(xs - x_c, row[0] - z_c) < row[2] + 4.0:
                        continue  # never park a crown on the lens of a fixed camera
                    items.append(("tree", xs, float(row[0]), row))
        for li, j, x, z, v in self._slots(self.car_lanes, t, z_lo, z_hi, 0xCA5):
            items.append(("car", x, z, (li, j, v)))
        if self.lead is not None:
            d0, a = self.lead
            items.append(("car", _CAMERA_LANE_X, z_c + d0 + a * math.sin(0.3 * t), (99, 0, self.speed)))
        for li, j, x, z, v in self._slots(self.ped_lanes, t, z_lo, z_hi, 0x9ED):
            items.append(("ped", x, z, (li, j, v)))
        if not items:
            return []
        u, v, depth = self._project(cam, np.array([[it[1], 0.0, it[2]] for it in items]))
        order = np.argsort(-depth, kind="stable")
        return [(float(depth[i]), float(u[i]), float(v[i]), *items[i]) for i in order if depth[i] > -6]

    def _lit(self, rgb, fog: float, shade: float = 1.0) -> tuple[float, float, float]:
        """An object colour after shading, distance fog and the clip's light (plain floats: fast)."""
        fc, li = self.fog_col, self.light
        return tuple(min(255.0, float((rgb[c] * shade * (1 - fog) + fc[c] * fog) * li[c])) for c in range(3))

    def _shadows(self, cam, items, shadow: np.ndarray) -> None:
        """Soft contact shadows on the ground, into a uint8 darkening layer."""
        discs, quads = [], []
        for d, _, _, kind, x, z, data in items:
            if d > 70:
                continue
            if kind == "tree":
                discs.append((x + 0.8 * self.sun, z, data[2] * 0.9, 115))
            elif kind == "ped":
                discs.append((x + 0.15 * self.sun, z, 0.3, 90))
            else:
                length, width = self._car_model(data)[4:6]
                x0, x1 = x - width / 2 - 0.15, x + width / 2 + 0.15
                z0, z1 = z - length / 2 - 0.1, z + length / 2 + 0.1
                quads.append([[x0, 0, z0], [x1, 0, z0], [x1, 0, z1], [x0, 0, z1]])
        if discs:
            dc = np.array(discs)
            x, z, r = dc[:, 0], dc[:, 1], dc[:, 2]
            zero = np.zeros_like(x)
            pts = np.stack([np.stack([x - r, zero, z], -1), np.stack([x + r, zero, z], -1),
                            np.stack([x, zero, z - r], -1), np.stack([x, zero, z + r], -1)], 1)
            u, v, zc = self._project(cam, pts)
            for i in np.nonzero((zc > _NEAR).all(1))[0]:
                cu, cv_ = (u[i, 0] + u[i, 1]) * 8, (v[i, 2] + v[i, 3]) * 8
                au, av = abs(u[i, 1] - u[i, 0]) * 8, abs(v[i, 2] - v[i, 3]) * 8
                if au < 5 or not (-au < cu < self.w * 16 + au and -av < cv_ < self.h * 16 + av):
                    continue
                cv2.ellipse(shadow, (round(cu), round(cv_)), (round(au), max(round(av), 3)), 0, 0, 360,
                            int(dc[i, 3]), -1, cv2.LINE_AA, _SHIFT)
        for q in quads:
            p = self._clip_poly(cam, np.array(q, float))
            if p is not None:
                cv2.fillPoly(shadow, [_pts(p)], 150, cv2.LINE_AA, _SHIFT)

    def _clip_poly(self, cam, poly: np.ndarray) -> np.ndarray | None:
        """Screen polygon of a world polygon, clipped against the near plane (Sutherland-Hodgman)."""
        u, v, zc = self._project(cam, poly)
        front = zc >= _NEAR
        if front.all():
            return np.stack([u, v], -1)
        if not front.any():
            return None
        out = []
        n = len(poly)
        for i in range(n):
            k = (i + 1) % n
            if front[i]:
                out.append(poly[i])
            if front[i] != front[k]:
                out.append(poly[i] + (_NEAR - zc[i]) / (zc[k] - zc[i]) * (poly[k] - poly[i]))
        pu, pv, _ = self._project(cam, np.array(out))
        return np.stack([pu, pv], -1)

    def _car_model(self, data):
        """A car in its own frame (centre of its footprint at the origin): polygons in draw order,
        their outward normals, colours and shades. Cached: a car never changes shape."""
        key = data[:2]
        if key in self._models:
            return self._models[key]
        li, j, v = data
        r = _u01(self.seed, 0xCA7, li, j, np.arange(8))
        length, width = 3.9 + 1.0 * r[0], 1.72 + 0.2 * r[1]
        van = r[2] < 0.12
        body_h = 1.45 if van else 0.62 + 0.18 * r[3]
        cab_h = 0.42 if van else 0.48 + 0.14 * r[4]
        paint = _CARS[int(r[5] * len(_CARS))]
        glass = np.array([52, 62, 76], np.float32) * (0.8 + 0.5 * r[6])
        tyre, under = np.array([26, 26, 28], np.float32), np.array([45, 45, 48], np.float32)
        oncoming = v < 0
        lamp = np.array((250, 236, 190) if oncoming else (200, 24, 24), np.float32)
        X, Z = width / 2, length / 2
        yb, yt = 0.32, 0.32 + body_h
        polys, normals, cols = [], [], []

        def add(poly, normal, col, shade=1.0):
            polys.append(poly)
            normals.append(normal)
            cols.append((col, shade))

        def box(x0, x1, y0, y1, z0, z1, col, glass_col=None, top=True):
            faces = [
                ([[x0, y0, z0], [x1, y0, z0], [x1, y1, z0], [x0, y1, z0]], (0, 0, -1), 0.86),
                ([[x0, y0, z1], [x1, y0, z1], [x1, y1, z1], [x0, y1, z1]], (0, 0, 1), 0.86),
                ([[x0, y0, z0], [x0, y0, z1], [x0, y1, z1], [x0, y1, z0]], (-1, 0, 0), 0.0),
                ([[x1, y0, z0], [x1, y0, z1], [x1, y1, z1], [x1, y1, z0]], (1, 0, 0), 0.0),
            ]
            if top:
                faces.append(([[x0, y1, z0], [x1, y1, z0], [x1, y1, z1], [x0, y1, z1]], (0, 1, 0), 1.08))
            for poly, normal, shade in faces:
                add(poly, normal, col, shade)
                if glass_col is not None and normal[1] == 0:
                    p = np.array(poly, float)
                    c = p.mean(0)
                    inset = c + (p - c) * np.array([0.84, 0.74, 0.84])
                    add(inset.tolist(), normal, glass_col, shade)

        # tyres and dark underbody seen below the body, then the body, wheels, lamps, the cabin
        for zt, n in ((-Z + 0.55, -1), (Z - 0.55, 1)):
            for wx0, wx1 in ((-X + 0.06, -X + 0.32), (X - 0.32, X - 0.06)):
                add([[wx0, 0, zt], [wx1, 0, zt], [wx1, 0.6, zt], [wx0, 0.6, zt]], (0, 0, n), tyre)
            add([[-X + 0.3, 0.12, zt], [X - 0.3, 0.12, zt], [X - 0.3, 0.4, zt], [-X + 0.3, 0.4, zt]], (0, 0, n), under)
        box(-X, X, yb, yt, -Z, Z, paint)
        for xs, n in ((-X - 0.01, -1), (X + 0.01, 1)):
            for zw in (-Z + 0.85, Z - 0.85):
                add([[xs, 0.0, zw - 0.33], [xs, 0.0, zw + 0.33], [xs, 0.62, zw + 0.33], [xs, 0.62, zw - 0.33]],
                    (n, 0, 0), tyre)
        for lx0, lx1 in ((-X + 0.08, -X + 0.38), (X - 0.38, X - 0.08)):
            add([[lx0, yt - 0.3, -Z - 0.01], [lx1, yt - 0.3, -Z - 0.01], [lx1, yt - 0.12, -Z - 0.01],
                 [lx0, yt - 0.12, -Z - 0.01]], (0, 0, -1), lamp)
        if van:
            cz0, cz1 = (-Z, -Z + 1.2) if oncoming else (Z - 1.2, Z)
            box(-X + 0.03, X - 0.03, yt, yt + cab_h, cz0, cz1, paint, glass)
        else:
            front, back = length * (0.28 + 0.06 * r[7]), length * 0.22
            cz0, cz1 = (-Z + front, Z - back) if oncoming else (-Z + back, Z - front)
            box(-X + 0.1, X - 0.1, yt, yt + cab_h, cz0, cz1, paint, glass)
        model = (np.array(polys, float), np.array(normals, float), np.array([c for c, _ in cols], np.float32),
                 np.array([sh for _, sh in cols], np.float32), length, width, yt + cab_h)
        self._models[key] = model
        while len(self._models) > 256:
            self._models.popitem(last=False)
        return model

    def _car(self, cam, img, lab, x, z, data, depth):
        polys, normals, colours, shades, length, width, top = self._car_model(data)
        x_c, z_c, yaw, h_c = cam
        if self.f * top / max(depth - length / 2, _NEAR) < 1.5:
            return  # too small to matter
        cam_local = np.array([x_c - x, h_c, z_c - z])
        draw = ((cam_local[None, :] - polys[:, 0, :]) * normals).sum(1) > 0  # back-face culling
        if self.f * top / max(depth, _NEAR) < 8:
            draw &= shades != 1.0  # a few pixels tall: only the body and cabin faces
        world = polys + np.array([x, 0.0, z])
        u, v, zc = self._project(cam, world)
        fog = 1 - math.exp(-max(depth, 0.0) / self.fog_d)
        side = 0.92 if (x_c < x) == (self.sun < 0) else 0.72
        sh = np.where(shades == 0.0, side, shades)[:, None]
        lit = np.minimum((colours * sh * (1 - fog) + self.fog_col * fog) * self.light, 255.0).tolist()
        clean = (zc[draw] >= _NEAR).all()
        if clean:
            pts = np.round(np.stack([u, v], -1) * 16.0)
            lo, hi = pts.min(1), pts.max(1)
            draw &= (hi[:, 0] >= 0) & (lo[:, 0] <= self.w * 16) & (hi[:, 1] >= 0) & (lo[:, 1] <= self.h * 16)
            pts = pts.astype(np.int32)
        for i in np.nonzero(draw)[0]:
            if clean:
                q = pts[i]
            else:
                c = self._clip_poly(cam, world[i])
                if c is None or not np.isfinite(c).all():
                    continue
                q = _pts(np.clip(c, -1e5, 1e5))
            cv2.fillConvexPoly(img, q, lit[i], cv2.LINE_AA, _SHIFT)
            cv2.fillConvexPoly(lab, q, CAR, cv2.LINE_8, _SHIFT)

    def _tree(self, img, lab, u0, v0, s, row, fog):
        z, trunk_h, r, ci, bright = row[:5]
        if s * (trunk_h + 2 * r) < 2.0 or u0 + 3 * r * s < 0 or u0 - 3 * r * s > self.w:
            return
        tw = max(0.16 * s, 0.35)
        p1 = (round((u0 - tw) * 16), round((v0 - (trunk_h + r * 0.5) * s) * 16))
        p2 = (round((u0 + tw) * 16), round(v0 * 16))
        cv2.rectangle(img, p1, p2, self._lit((88, 66, 46), fog), -1, cv2.LINE_AA, _SHIFT)
        cv2.rectangle(lab, p1, p2, VEGETATION, -1, cv2.LINE_8, _SHIFT)
        base = _FOLIAGE[int(ci)] * bright
        b = row[5:]
        cy = trunk_h + r * 0.9
        blobs = [(0.0, cy, r, 0.8)]
        for k in range(3):
            blobs.append(((b[k] - 0.5) * 1.2 * r, cy + (b[k + 3] - 0.3) * 0.8 * r, r * (0.55 + 0.25 * b[k + 6]),
                          0.9 + 0.08 * k))
        blobs.append((-0.3 * r * self.sun, cy + 0.3 * r, r * 0.45, 1.18))  # the sunlit side
        if r * s < 3:
            blobs = blobs[:1]
        for bx, by, br, sh in blobs:
            c = (round((u0 + bx * s) * 16), round((v0 - by * s) * 16))
            rad = round(max(br * s, 0.5) * 16)
            cv2.circle(img, c, rad, self._lit(base, fog, sh), -1, cv2.LINE_AA, _SHIFT)
            cv2.circle(lab, c, rad, VEGETATION, -1, cv2.LINE_8, _SHIFT)

    def _person_model(self, data):
        """Height and colours of a pedestrian (cached: hashing per frame would cost more)."""
        key = ("p", *data[:2])
        if key not in self._models:
            r = _u01(self.seed, 0x9E5, data[0], data[1], np.arange(6))
            pick = lambda table, x: table[int(x * len(table))]  # noqa: E731
            self._models[key] = (1.55 + 0.35 * r[0], pick(_SKINS, r[1]), pick(_CLOTHES, r[2]),
                                 pick(_CLOTHES, r[3]) * 0.7, pick(_HAIR, r[4]), r[5])
            while len(self._models) > 512:
                self._models.popitem(last=False)
        return self._models[key]

    def _person(self, img, lab, u0, v0, s, z, data, fog):
        hp, skin, shirt, pants, hair, phase = self._person_model(data)
        px = s * hp
        if px < 2.5 or u0 + s < 0 or u0 - s > self.w:
            return
        shirt = self._lit(shirt, fog)
        skin = self._lit(skin, fog)
        hc = (round(u0 * 16), round((v0 - 0.905 * px) * 16))
        hr = 0.065 * px
        if px < 8:  # a few pixels: a silhouette
            q = _pts(np.array([[u0 - 0.12 * px, v0 - 0.85 * px], [u0 + 0.12 * px, v0 - 0.85 * px],
                               [u0 + 0.08 * px, v0], [u0 - 0.08 * px, v0]]))
            cv2.fillConvexPoly(img, q, shirt, cv2.LINE_AA, _SHIFT)
            cv2.fillConvexPoly(lab, q, PERSON, cv2.LINE_8, _SHIFT)
        else:
            swing = math.sin(2 * math.pi * (z / 1.4 + phase))  # the legs move with the distance walked
            q = _PERSON_POLYS + swing * _PERSON_SWING
            scr = np.round(np.stack([u0 + q[..., 0] * px, v0 - q[..., 1] * px], -1) * 16).astype(np.int32)
            pants = self._lit(pants, fog)
            for i, col in enumerate((pants, pants, shirt, shirt, shirt)):
                cv2.fillConvexPoly(img, scr[i], col, cv2.LINE_AA, _SHIFT)
                cv2.fillConvexPoly(lab, scr[i], PERSON, cv2.LINE_8, _SHIFT)
        rad = round(max(hr, 0.5) * 16)
        cv2.circle(img, hc, rad, skin, -1, cv2.LINE_AA, _SHIFT)
        cv2.circle(lab, hc, rad, PERSON, -1, cv2.LINE_8, _SHIFT)
        if hr > 1.5:
            cv2.ellipse(img, (hc[0], hc[1] - round(hr * 5)), (round(hr * 16), round(hr * 11)), 0, 180, 360,
                        self._lit(hair, fog), -1, cv2.LINE_AA, _SHIFT)

    # --- one frame ----------------------------------------------------------------------------

    def frame(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        t = k / self.fps
        cam = self.camera(t)
        if self.fixed and self._bg_cache is not None:
            planes, lab0, ground = self._bg_cache
        else:
            planes, lab0 = self._background(cam)
            ground = _GROUND_LUT[lab0]
            if self.fixed:  # a still camera sees the same background every frame
                self._bg_cache = (planes, lab0, ground)
        items = self._collect(cam, t)
        shadow = np.zeros(lab0.shape, np.uint8)
        self._shadows(cam, items, shadow)
        dark = None
        if shadow.any():
            dark = 1.0 - (shadow * ground).astype(np.float32) * np.float32(1.0 / 400.0)
        chans = []
        for c in range(3):
            p = planes[c] if dark is None else planes[c] * dark
            chans.append(cv2.convertScaleAbs(p, alpha=float(self.light[c])))  # rounds and saturates
        img = cv2.merge(chans)
        lab = lab0.copy()
        for d, u0, v0, kind, x, z, data in items:  # far to near: the painter's algorithm
            if kind == "car":
                self._car(cam, img, lab, x, z, data, d)
            elif d > _NEAR:
                fog = 1 - math.exp(-d / self.fog_d)
                if kind == "tree":
                    self._tree(img, lab, u0, v0, self.f / d, data, fog)
                else:
                    self._person(img, lab, u0, v0, self.f / d, z, data, fog)
        return lab, img


_GROUND_LUT = np.zeros(256, np.uint8)
_GROUND_LUT[[ROAD, SIDEWALK, LANE_MARKING, TERRAIN]] = 1
_GROUND_LABELS = np.array([ROAD, SIDEWALK, TERRAIN], np.uint8)
_LIT_WINDOW = (250.0, 210.0, 130.0)
# a pedestrian in units of its height, anchor at the feet: two legs, torso, two arms (quads)
_PERSON_POLYS = np.array(
    [
        [[-0.035, 0.5], [0.075, 0.5], [0.055, 0.0], [-0.055, 0.0]],
        [[-0.075, 0.5], [0.035, 0.5], [0.055, 0.0], [-0.055, 0.0]],
        [[-0.13, 0.8], [0.13, 0.8], [0.11, 0.48], [-0.11, 0.48]],
        [[0.095, 0.8], [0.165, 0.8], [0.185, 0.5], [0.115, 0.5]],
        [[-0.165, 0.8], [-0.095, 0.8], [-0.115, 0.5], [-0.185, 0.5]],
    ]
)
_PERSON_SWING = np.zeros_like(_PERSON_POLYS)
_PERSON_SWING[0, 2:, 0] = 0.13  # feet swing forward and back
_PERSON_SWING[1, 2:, 0] = -0.13
_PERSON_SWING[3, 2:, 0] = -0.08  # hands swing against the feet
_PERSON_SWING[4, 2:, 0] = 0.08


class StreetScene:
    """A synthetic clip with random access: ``scene.frame(k) -> (labels, rgb)``.

    Labels are uint8 H x W IDs in [0, NUM_CLASSES); rgb is uint8 H x W x 3. Scene cuts switch
    to an independent street (derived seed) whose clock restarts at the cut.
    """

    def __init__(self, config: SceneConfig):
        if config.height < 8 or config.width < 8:
            raise UserError(f"a synthetic scene needs at least 8x8 pixels, not {config.height}x{config.width}.")
        if config.frames < 0 or config.fps <= 0:
            raise UserError(f"a synthetic scene needs frames >= 0 and fps > 0, not {config.frames} and {config.fps}.")
        self.config = config
        self._cuts = config.cuts()
        self._segments: dict[int, _Street] = {}

    def __len__(self) -> int:
        return self.config.frames

    def segment_of(self, k: int) -> tuple[int, int]:
        """(segment index, frame index within the segment) of frame ``k``."""
        seg = int(np.searchsorted(self._cuts, k, side="right"))
        return seg, k - (self._cuts[seg - 1] if seg else 0)

    def _segment(self, seg: int) -> _Street:
        if seg not in self._segments:
            c = self.config
            seed = c.seed if seg == 0 else derive_seed(c.seed, seg)
            # keep one shot at a time: a long clip with many cuts stays small
            self._segments = {seg: _Street(seed, c.height, c.width, c.fps, c.fixed_camera, c.camera_speed, c.traffic)}
        return self._segments[seg]

    def frame(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Labels (uint8 H x W) and RGB (uint8 H x W x 3) of frame ``k``; any order is fine."""
        if k < 0:
            raise IndexError(f"frame {k} of a synthetic clip")
        seg, local = self.segment_of(k)
        return self._segment(seg).frame(local)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for k in range(self.config.frames):
            yield self.frame(k)


def render_clip(config: SceneConfig | None = None, **overrides) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(labels uint8 HxW, rgb uint8 HxWx3)`` for each frame of a clip, streaming.

    ``render_clip(SceneConfig(seed=3, frames=100))`` or ``render_clip(seed=3, frames=100)``.
    """
    config = replace(config or SceneConfig(), **overrides)
    yield from StreetScene(config)


def write_clip(config: SceneConfig, labels_out, rgb_out=None, *, colour_out=None, lossless: bool = False) -> int:
    """Render a clip to disk, streaming: label maps as a folder of PNGs (pixel = class ID,
    what ``open_frames(..., labels=True)`` reads), the RGB frames as a video or PNG folder, and
    optionally the colourised labels for viewing. Outputs appear only when complete.
    Returns the number of frames."""
    import contextlib

    from fastv2v.data.video import open_writer

    if Path(labels_out).suffix:
        raise UserError(f"{labels_out} must be a folder path (no extension): label maps are stored as lossless PNGs.")
    with contextlib.ExitStack() as stack:
        fps = Fraction(config.fps).limit_denominator(1001)
        lab_w = stack.enter_context(open_writer(labels_out, fps=fps))
        rgb_w = stack.enter_context(open_writer(rgb_out, fps=fps, lossless=lossless)) if rgb_out else None
        col_w = stack.enter_context(open_writer(colour_out, fps=fps, lossless=lossless)) if colour_out else None
        for labels, rgb in render_clip(config):
            lab_w.write(labels)
            if rgb_w is not None:
                rgb_w.write(rgb)
            if col_w is not None:
                col_w.write(colorize_labels(labels))
    return config.frames
