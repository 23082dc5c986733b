"""The drawing surface of synthfaces: a face's proportions and colours in face units, and the primitives
(polygons, lines, arcs, strokes, colour mixing) every part of the picture is drawn with."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
from PIL import Image, ImageDraw

Colour = tuple[int, ...]

_SKIN = np.array(
    [(255, 224, 200), (242, 198, 165), (226, 176, 137), (200, 144, 104), (165, 110, 74),
     (128, 84, 57), (100, 66, 46)], dtype=float,
)  # fmt: skip
NECK_BASE = 1.42  # face units: where the neck meets the shoulders


def mix(a: Sequence[float], b: Sequence[float], t: float) -> Colour:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def shade(c: Sequence[float], f: float, alpha: int | None = None) -> Colour:
    rgb = tuple(int(min(255, max(0, round(x * f)))) for x in c[:3])
    return rgb if alpha is None else (*rgb, alpha)


def hsv(h: float, s: float, v: float) -> Colour:
    return tuple(int(round(255 * x)) for x in colorsys.hsv_to_rgb(h % 1.0, s, v))


def arc(cx: float, cy: float, rx: float, ry: float, t0: float = 0.0, t1: float = 2 * np.pi,
        n: int = 32) -> np.ndarray:  # fmt: skip
    t = np.linspace(t0, t1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def stroke(pts: np.ndarray, width: float | np.ndarray) -> np.ndarray:
    """Outline polygon of a variable-width stroke: one polygon, so translucent strokes blend once."""
    d = np.empty_like(pts)
    d[1:-1] = pts[2:] - pts[:-2]
    d[0], d[-1] = pts[1] - pts[0], pts[-1] - pts[-2]
    normal = d[:, ::-1] * [-1.0, 1.0]
    normal *= (np.asarray(width, dtype=float) / (2 * (np.hypot(d[:, 0], d[:, 1]) + 1e-9)))[:, None]
    return np.concatenate([pts + normal, (pts - normal)[::-1]])


class Face:
    """Draws one face on a supersampled canvas, in face units.

    Face units: origin at the centre of the face, y down, the face is about 1.6 wide and 2.25 tall.
    Each part is a polygon in these units; ``depth`` shifts inner features sideways with the head's
    yaw so that faces look slightly turned.
    """

    def __init__(self, attrs: dict[str, bool], st: SimpleNamespace, canvas: int) -> None:
        self.a = attrs
        self.st = st
        self.canvas = canvas
        self.img = Image.new("RGB", (canvas, canvas))
        self.draw = ImageDraw.Draw(self.img, "RGBA")
        male, young = attrs["Male"], attrs["Young"]
        self.scale = canvas * 0.29 * (0.93 + 0.14 * st.scale)
        angle = np.deg2rad((st.angle - 0.5) * 14.0)
        c, s = np.cos(angle), np.sin(angle)
        self.m = self.scale * np.array([[c, -s], [s, c]])
        self.centre = canvas * np.array([0.5 + 0.05 * (st.dx - 0.5), 0.45 + 0.04 * (st.dy - 0.5)])
        self.yaw = (st.yaw - 0.5) * 0.8
        self.W = (0.86 if male else 0.79) + 0.06 * st.width + (0.14 if attrs["Chubby"] else 0.0)
        self.Htop = 1.2
        self.Hbot = (1.07 if male else 1.0) + (0.05 if attrs["Chubby"] else 0.0)
        self.jaw_n = (2.9 + 0.6 * st.jaw) if male else (1.95 + 0.3 * st.jaw)
        self.taper = 0.05 if attrs["Chubby"] else (0.22 if male else 0.32) + 0.1 * st.chin
        if attrs["Chubby"]:
            self.jaw_n = 2.3
        if attrs["Pale_Skin"]:
            self.skin = mix((255, 240, 234), (246, 226, 214), st.skin)
        else:
            # Brown and red hair are as dark as dark skin: keep those faces light enough to tell hair from skin.
            darkest = (
                1.0
                if attrs["Bald"] or attrs["Black_Hair"] or attrs["Blond_Hair"] or attrs["Gray_Hair"]
                else 0.55
            )
            t = (0.1 + (darkest - 0.1) * st.skin**2.2) * (len(_SKIN) - 1)
            i = min(int(t), len(_SKIN) - 2)
            self.skin = mix(_SKIN[i], _SKIN[i + 1], t - i)
        if not young:
            self.skin = mix(self.skin, (200, 185, 175), 0.12)
        self.hair = self._hair_colour()
        self.long_hair = st.long_hair < (0.12 if male else 0.85)
        self.hair_len = (0.95 + 0.55 * st.hair_length) if male else (1.0 + 1.3 * st.hair_length)
        bald_grey = st.facial_grey < (0.15 if young else 0.7)
        self.facial_hair = (
            shade(self.hair, 0.85) if not attrs["Bald"] else (150, 148, 145) if bald_grey else (32, 26, 22)
        )
        self.eye_x = 0.38 * self.W + 0.03 * (st.eye_gap - 0.5)
        self.eye_y = -0.08
        self.mouth_y = 0.6
        self.mouth_w = (0.27 + 0.04 * st.mouth_w) * (1.2 if attrs["Smiling"] else 1.0)
        self.neck_w = (0.45 if male else 0.37) * self.W
        self.neck_depth = 2.6 if attrs["Wearing_Necktie"] else 1.58 if male else 1.62 + 0.35 * st.neckline

    # ---------------------------------------------------------------------------------------- basics
    def _xy(self, pts: np.ndarray, depth: float) -> list[float]:
        p = np.array(pts, dtype=float)
        p[:, 0] += self.yaw * depth
        return (p @ self.m.T + self.centre).ravel().tolist()

    def poly(self, pts: np.ndarray, fill: Colour, depth: float = 0.0) -> None:
        self.draw.polygon(self._xy(pts, depth), fill=fill)

    def line(self, pts: np.ndarray, fill: Colour, width: float, depth: float = 0.0) -> None:
        self.draw.line(
            self._xy(pts, depth), fill=fill, width=max(1, round(width * self.scale)), joint="curve"
        )

    def _hair_colour(self) -> Colour:
        a, t = self.a, self.st.hair_shade
        if a["Gray_Hair"]:
            return mix((150, 150, 152), (222, 222, 220), t)
        if a["Blond_Hair"]:
            return mix((196, 160, 92), (240, 214, 150), t)
        if a["Brown_Hair"]:
            return mix((72, 46, 28), (132, 88, 52), t)
        if a["Black_Hair"]:
            return mix((20, 17, 16), (45, 37, 33), t)
        return mix((118, 44, 22), (176, 82, 40), t)  # red / auburn: no CelebA label

    def jaw_x(self, y: np.ndarray | float) -> np.ndarray:
        """Half-width of the face at height ``y`` (y >= 0), matching the outline polygon."""
        r = np.clip(np.asarray(y, dtype=float) / self.Hbot, 0.0, 1.0)
        return self.W * (1 - r**self.jaw_n) ** (1 / self.jaw_n) * (1 - self.taper * r**3)

    def outline(self) -> np.ndarray:
        t = np.linspace(np.pi, 2 * np.pi, 24)
        upper = np.stack([self.W * np.cos(t), self.Htop * np.sin(t)], axis=1)
        y = np.linspace(0, self.Hbot, 16)
        right = np.stack([self.jaw_x(y), y], axis=1)
        left = right[::-1] * [-1, 1]
        return np.concatenate([upper, right[1:], left[1:]])

    def neckline(self) -> np.ndarray:
        """The opening of the clothes, left to right: cut out of the clothes, filled by the neck."""
        w = self.neck_w + 0.12
        x = np.linspace(-w, w, 13)
        return np.stack([x, NECK_BASE + (self.neck_depth - NECK_BASE) * (1 - np.abs(x / w) ** 1.6)], axis=1)
