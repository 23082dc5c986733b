"""synthfaces: procedural cartoon faces with ground-truth CelebA attributes, written as a CelebA folder.

Why: genface needs face data that is there without a download, trains recognisable faces on a CPU in
minutes, and carries *true* attribute labels, so that the attribute classifier, latent directions and
edits can be checked against the truth instead of against another model.

``generate_synthfaces(root)`` writes the torchvision CelebA layout (``img_align_celeba/000001.png ...``,
``list_attr_celeba.txt``, ``list_eval_partition.txt``) plus ``synthfaces.json``; the images are PNG,
not JPEG. Every image is a pure function of ``(seed, index)``, so a dataset is byte-identical whatever
the number of worker processes.

Rendered attributes (labels are the truth; each is drawn so a small CNN can see it at 64 px):
5_o_Clock_Shadow (stubble on the jaw), Arched_Eyebrows, Bald (no hair, shiny scalp), Bangs (fringe
over the forehead, above the brows), Big_Lips, Big_Nose, Black_Hair / Blond_Hair / Brown_Hair /
Gray_Hair (mutually exclusive; all four are -1 for bald heads and for red/auburn hair), Blurry
(Gaussian blur), Bushy_Eyebrows, Chubby (wider, rounder face), Eyeglasses (frames, bridge and arms;
some tinted), Goatee (chin beard), Heavy_Makeup (eye shadow, eyeliner, blush), Male (square jaw,
wide neck, thick brows, mostly short hair), Mouth_Slightly_Open, Mustache, Narrow_Eyes, No_Beard (-1
means a full beard or a goatee), Pale_Skin, Receding_Hairline, Rosy_Cheeks, Sideburns, Smiling
(curved mouth; open smiles show teeth), Wavy_Hair, Wearing_Earrings, Wearing_Hat (beanie, brimmed hat or cap),
Wearing_Lipstick, Wearing_Necklace, Wearing_Necktie, Young (older faces have wrinkles and more often
grey hair).

Not rendered, always -1 in ``list_attr_celeba.txt`` (do not train or evaluate on them):
Attractive, Bags_Under_Eyes, Double_Chin, High_Cheekbones, Oval_Face, Pointy_Nose, Straight_Hair.

Correlations follow CelebA's direction (Mustache, beards, sideburns and stubble only on men; Bald
mostly men and older; lipstick and make-up only on women; Gray_Hair mostly when not Young), with
rare attributes made more frequent than in CelebA (each rendered attribute is present in roughly
8-60 % of faces; No_Beard, a negation, in about 82 %) so that 10k images are enough to learn them.
One rendering-only coupling: faces with brown or red hair are never very dark-skinned, so that hair
and beards stay distinguishable from skin.

``VERSION`` is in ``synthfaces.json`` and in the DataModule's array-cache id, so a dataset or prepared
arrays from an older renderer are regenerated, never reused. v2 drew Big_Lips thicker (in v1 the toggle
moved 2 pixels or fewer on a tenth of the faces at 64 px, none on most blurry ones); v3 ends Bangs above
the brows (the fringe hid the peak of Arched_Eyebrows) and raises that arch.
"""

from __future__ import annotations

import colorsys
import contextlib
import json
import multiprocessing
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

VERSION = 3
IMAGE_DIR = "img_align_celeba"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
META_FILE = "synthfaces.json"
LOCK_FILE = ".synthfaces.lock"

CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)  # fmt: skip
_NOT_RENDERED = frozenset(
    {"Attractive", "Bags_Under_Eyes", "Double_Chin", "High_Cheekbones", "Oval_Face", "Pointy_Nose",
     "Straight_Hair"}
)  # fmt: skip
ATTRIBUTES: tuple[str, ...] = tuple(a for a in CELEBA_ATTRIBUTES if a not in _NOT_RENDERED)
HAIR_COLOURS: tuple[str, ...] = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")

Colour = tuple[int, ...]


# --------------------------------------------------------------------------------------------------
# Attributes
# --------------------------------------------------------------------------------------------------
def sample_attributes(rng: np.random.Generator) -> dict[str, bool]:
    """Draw one face's attributes with CelebA-like correlations (see the module docstring).

    A fixed number of uniforms is consumed whatever the outcome, so the renderer that follows on the
    same generator sees the same stream for every attribute combination.
    """
    u = iter(rng.random(32))

    def p(prob: float) -> bool:
        return bool(next(u) < prob)

    male = p(0.42)
    young = p(0.52 if male else 0.68)
    hat = p(0.10)
    bald = not hat and p((0.07 if young else 0.42) if male else 0.01)
    hair_u = next(u)
    gray = not bald and hair_u < (0.02 if young else 0.30)
    # Hair colour among the non-grey ones: black, brown, blond, red/auburn (red carries no label).
    weights = (0.42, 0.38, 0.13, 0.07) if male else (0.29, 0.33, 0.28, 0.10)
    colour_u = next(u)
    colour = int(np.searchsorted(np.cumsum(weights), colour_u * sum(weights), side="right"))
    bangs = not bald and not hat and p(0.10 if male else 0.30)
    receding = not bald and not hat and not bangs and p((0.16 if young else 0.42) if male else 0.05)
    wavy = not bald and p(0.12 if male else 0.45)
    beard_u = next(u)
    full_beard = male and beard_u < 0.22
    goatee = male and 0.22 <= beard_u < 0.42
    mustache = male and p(0.80 if full_beard else 0.60 if goatee else 0.08)
    stubble = male and not (full_beard or goatee) and p(0.40)
    sideburns = male and not bald and p(0.75 if full_beard else 0.15)
    makeup = not male and p(0.55)
    lipstick = not male and p(0.95 if makeup else 0.45)
    smiling = p(0.48)
    mouth_open = p(0.65 if smiling else 0.25)
    attrs = {
        "5_o_Clock_Shadow": stubble,
        "Arched_Eyebrows": p(0.08 if male else 0.42),
        "Bald": bald,
        "Bangs": bangs,
        "Big_Lips": p(0.15 if male else 0.30),
        "Big_Nose": p(0.35 if male else 0.10),
        "Black_Hair": not bald and not gray and colour == 0,
        "Blond_Hair": not bald and not gray and colour == 2,
        "Blurry": p(0.10),
        "Brown_Hair": not bald and not gray and colour == 1,
        "Bushy_Eyebrows": p(0.30 if male else 0.06),
        "Chubby": p(0.05 if young else 0.16),
        "Eyeglasses": p((0.10 if young else 0.18) if male else (0.06 if young else 0.12)),
        "Goatee": goatee,
        "Gray_Hair": gray,
        "Heavy_Makeup": makeup,
        "Male": male,
        "Mouth_Slightly_Open": mouth_open,
        "Mustache": mustache,
        "Narrow_Eyes": p(0.12),
        "No_Beard": not (full_beard or goatee),
        "Pale_Skin": p(0.10),
        "Receding_Hairline": receding,
        "Rosy_Cheeks": p(0.03 if male else 0.20 if makeup else 0.13),
        "Sideburns": sideburns,
        "Smiling": smiling,
        "Wavy_Hair": wavy,
        "Wearing_Earrings": not male and p(0.38),
        "Wearing_Hat": hat,
        "Wearing_Lipstick": lipstick,
        "Wearing_Necklace": not male and p(0.22),
        "Wearing_Necktie": male and p(0.22),
        "Young": young,
    }
    return {name: attrs[name] for name in ATTRIBUTES}


def _check_attrs(attrs: dict[str, bool]) -> dict[str, bool]:
    """Complete ``attrs`` (missing: False, No_Beard: True); refuse names that cannot be honoured, so typos fail."""
    unknown = sorted(set(attrs) - set(CELEBA_ATTRIBUTES))
    if unknown:
        raise ValueError(f"unknown attribute name(s) {unknown}; expected CelebA names: {list(ATTRIBUTES)}")
    unrendered = sorted(a for a in attrs if a in _NOT_RENDERED and attrs[a])
    if unrendered:
        raise ValueError(f"synthfaces does not render {unrendered}; rendered attributes: {list(ATTRIBUTES)}")
    full = {a: bool(attrs.get(a, a == "No_Beard")) for a in ATTRIBUTES}
    colours = [c for c in HAIR_COLOURS if full[c]]
    if len(colours) > 1:
        raise ValueError(f"hair colours are exclusive, got {colours}")
    return full


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------
_STYLE_FIELDS = (
    "dx", "dy", "scale", "angle", "yaw", "width", "jaw", "chin", "skin", "hair_shade", "hair_volume",
    "hair_length", "long_hair", "part", "curl_phase", "locks", "eye_colour", "eye_size", "eye_gap",
    "gaze", "lip_colour", "lipstick", "shadow_colour", "hat_type", "hat_hue", "hat_value",
    "glasses_dark", "frame_colour", "frame_shape", "clothes_hue", "clothes_value", "shirt",
    "tie_colour", "neckline", "earring", "metal", "bg_hue1", "bg_hue2", "bg_sat", "bg_val1",
    "bg_val2", "bg_dir", "light_dir", "light_k", "blur", "facial_grey", "mouth_w", "brow_h",
)  # fmt: skip

_SKIN = np.array(
    [(255, 224, 200), (242, 198, 165), (226, 176, 137), (200, 144, 104), (165, 110, 74),
     (128, 84, 57), (100, 66, 46)], dtype=float,
)  # fmt: skip
_EYES = ((88, 56, 32), (46, 32, 24), (70, 120, 175), (80, 125, 80), (125, 98, 52), (105, 125, 140))
_LIPSTICK = ((185, 20, 40), (215, 70, 115), (135, 20, 60), (225, 90, 80))
_SHADOW = ((120, 60, 135), (120, 80, 60), (70, 95, 165), (55, 45, 60))
_METAL = ((222, 182, 70), (208, 210, 222), (240, 238, 228))
_FRAMES = ((20, 20, 22), (70, 40, 25), (150, 150, 160), (120, 25, 35))
_NECK_BASE = 1.42  # face units: where the neck meets the shoulders


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> Colour:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def _shade(c: Sequence[float], f: float, alpha: int | None = None) -> Colour:
    rgb = tuple(int(min(255, max(0, round(x * f)))) for x in c[:3])
    return rgb if alpha is None else (*rgb, alpha)


def _hsv(h: float, s: float, v: float) -> Colour:
    return tuple(int(round(255 * x)) for x in colorsys.hsv_to_rgb(h % 1.0, s, v))


def _arc(cx: float, cy: float, rx: float, ry: float, t0: float = 0.0, t1: float = 2 * np.pi,
         n: int = 32) -> np.ndarray:  # fmt: skip
    t = np.linspace(t0, t1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _stroke(pts: np.ndarray, width: float | np.ndarray) -> np.ndarray:
    """Outline polygon of a variable-width stroke: one polygon, so translucent strokes blend once."""
    d = np.empty_like(pts)
    d[1:-1] = pts[2:] - pts[:-2]
    d[0], d[-1] = pts[1] - pts[0], pts[-1] - pts[-2]
    normal = d[:, ::-1] * [-1.0, 1.0]
    normal *= (np.asarray(width, dtype=float) / (2 * (np.hypot(d[:, 0], d[:, 1]) + 1e-9)))[:, None]
    return np.concatenate([pts + normal, (pts - normal)[::-1]])


class _Face:
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
            self.skin = _mix((255, 240, 234), (246, 226, 214), st.skin)
        else:
            # Brown and red hair are as dark as dark skin: keep those faces light enough to tell hair from skin.
            darkest = (
                1.0
                if attrs["Bald"] or attrs["Black_Hair"] or attrs["Blond_Hair"] or attrs["Gray_Hair"]
                else 0.55
            )
            t = (0.1 + (darkest - 0.1) * st.skin**2.2) * (len(_SKIN) - 1)
            i = min(int(t), len(_SKIN) - 2)
            self.skin = _mix(_SKIN[i], _SKIN[i + 1], t - i)
        if not young:
            self.skin = _mix(self.skin, (200, 185, 175), 0.12)
        self.hair = self._hair_colour()
        self.long_hair = st.long_hair < (0.12 if male else 0.85)
        self.hair_len = (0.95 + 0.55 * st.hair_length) if male else (1.0 + 1.3 * st.hair_length)
        bald_grey = st.facial_grey < (0.15 if young else 0.7)
        self.facial_hair = (
            _shade(self.hair, 0.85) if not attrs["Bald"] else (150, 148, 145) if bald_grey else (32, 26, 22)
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
            return _mix((150, 150, 152), (222, 222, 220), t)
        if a["Blond_Hair"]:
            return _mix((196, 160, 92), (240, 214, 150), t)
        if a["Brown_Hair"]:
            return _mix((72, 46, 28), (132, 88, 52), t)
        if a["Black_Hair"]:
            return _mix((20, 17, 16), (45, 37, 33), t)
        return _mix((118, 44, 22), (176, 82, 40), t)  # red / auburn: no CelebA label

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

    # ------------------------------------------------------------------------------------ background
    def background(self) -> None:
        st, n = self.st, self.canvas
        c1 = np.array(_hsv(st.bg_hue1, 0.1 + 0.4 * st.bg_sat, 0.35 + 0.6 * st.bg_val1), dtype=float)
        c2 = np.array(_hsv(st.bg_hue2, 0.1 + 0.4 * st.bg_sat, 0.35 + 0.6 * st.bg_val2), dtype=float)
        ang = 2 * np.pi * st.bg_dir
        g = np.linspace(-0.5, 0.5, n // 4)
        t = np.clip(np.cos(ang) * g[None, :] + np.sin(ang) * g[:, None] + 0.5, 0, 1)[..., None]
        # At output resolution, blown up to the canvas: each 4x4 block becomes one output pixel again.
        small = Image.fromarray((c1 + (c2 - c1) * t).astype(np.uint8))
        self.img.paste(small.resize((n, n), Image.Resampling.NEAREST))

    def neckline(self) -> np.ndarray:
        """The opening of the clothes, left to right: cut out of the clothes, filled by the neck."""
        w = self.neck_w + 0.12
        x = np.linspace(-w, w, 13)
        return np.stack([x, _NECK_BASE + (self.neck_depth - _NECK_BASE) * (1 - np.abs(x / w) ** 1.6)], axis=1)

    def clothes(self) -> None:
        st = self.st
        colour = _hsv(st.clothes_hue, 0.25 + 0.5 * st.shirt, 0.15 + 0.75 * st.clothes_value)
        sx = np.linspace(-2.6, -self.neck_w - 0.12, 10)
        shoulder = np.stack([sx, _NECK_BASE + 0.55 * ((-sx - self.neck_w) / 2.2) ** 1.5], axis=1)
        pts = np.concatenate(
            [[[-2.6, 2.8]], shoulder, self.neckline(), shoulder[::-1] * [-1, 1], [[2.6, 2.8]]]
        )
        self.poly(pts, colour)

    def back_hair(self) -> None:
        if self.a["Bald"] or not self.long_hair:
            return
        st, W = self.st, self.W
        v = 0.12 + 0.12 * st.hair_volume
        length = self.hair_len
        t = np.linspace(0, -np.pi, 30)
        top = np.stack([(W + v) * np.cos(t), (self.Htop + v) * np.sin(t)], axis=1)
        y = np.linspace(0, length, 14)
        wave = 0.05 * np.sin(9 * y + 6 * st.curl_phase) if self.a["Wavy_Hair"] else 0.0
        side = np.stack([W + v + 0.18 * y / length + wave, y], axis=1)
        # Two curtains that fall in front of the shoulders; the middle stays behind the neck.
        inner = self.neck_w - 0.02
        bottom = np.array([[inner + 0.1, length + 0.05], [inner, length - 0.1], [inner, 1.1]])
        right = np.concatenate([side, bottom])
        pts = np.concatenate([right[::-1], top, right * [-1, 1]])
        self.poly(pts, _shade(self.hair, 0.8))

    def neck(self) -> None:
        w = self.neck_w
        top = _NECK_BASE - 0.02
        pts = np.concatenate([[[-w, 0.5], [-w, top]], self.neckline(), [[w, top], [w, 0.5]]])
        self.poly(pts, _shade(self.skin, 0.9))
        # shadow under the chin so that the jaw reads against the neck
        self.poly(_arc(0, self.Hbot - 0.08, w * 1.05, 0.24, 0, np.pi, 16), _shade(self.skin, 0.55, 80))

    def neckwear(self) -> None:
        a, st = self.a, self.st
        if a["Wearing_Necktie"]:
            shirt = _mix((250, 250, 250), (175, 200, 235), st.shirt)
            w = self.neck_w
            self.poly(np.array([[-w - 0.12, _NECK_BASE], [w + 0.12, _NECK_BASE], [0.0, 2.7]]), shirt)
            self.poly(np.array([[-w - 0.1, 1.36], [-0.02, 1.56], [-w * 0.4, 1.72]]), _shade(shirt, 0.9))
            self.poly(np.array([[w + 0.1, 1.36], [0.02, 1.56], [w * 0.4, 1.72]]), _shade(shirt, 0.9))
            tie = _hsv(st.tie_colour, 0.75, 0.35 + 0.5 * st.clothes_value)
            self.poly(np.array([[-0.11, 1.44], [0.11, 1.44], [0.08, 1.6], [-0.08, 1.6]]), _shade(tie, 0.85))
            self.poly(np.array([[-0.08, 1.6], [0.08, 1.6], [0.2, 2.3], [0.0, 2.45], [-0.2, 2.3]]), tie)
        if a["Wearing_Necklace"]:
            metal = _METAL[int(st.metal * len(_METAL))]
            w = self.neck_w + 0.04
            x = np.linspace(-w, w, 17)
            chain = np.stack([x, 1.38 + 0.22 * (1 - (x / w) ** 2)], axis=1)
            self.line(chain, _shade(metal, 0.8), 0.045)
            self.poly(_arc(0, 1.66, 0.07, 0.08, n=12), metal)

    # ------------------------------------------------------------------------------------------ head
    def ears(self) -> None:
        for sgn in (-1, 1):
            cx = sgn * (self.W - 0.03)
            depth = -0.3 * sgn
            self.poly(_arc(cx, 0.08, 0.13, 0.23, n=16), _shade(self.skin, 0.93), depth)
            self.poly(_arc(cx + sgn * 0.03, 0.08, 0.06, 0.14, n=12), _shade(self.skin, 0.72), depth)

    def head(self) -> None:
        if self.a["Chubby"]:  # a second chin below the first
            self.poly(_arc(0, self.Hbot + 0.03, 0.5 * self.W, 0.13, n=20), _shade(self.skin, 0.95))
            self.poly(_stroke(_arc(0, self.Hbot + 0.03, 0.5 * self.W, 0.13, 0.15 * np.pi, 0.85 * np.pi, 12), 0.03),
                      _shade(self.skin, 0.5, 110))  # fmt: skip
        self.poly(self.outline(), self.skin)
        if self.a["Bald"]:
            self.poly(_arc(-0.2, -0.95, 0.32, 0.14, n=16), _shade(self.skin, 1.25, 140))

    def sideburns(self) -> None:
        if not self.a["Sideburns"] or self.a["Bald"]:
            return
        for sgn in (-1, 1):
            x0 = sgn * (self.W - 0.01)
            x1 = sgn * (self.W - 0.17)
            pts = np.array([[x0, -0.45], [x0, 0.45], [x1 + sgn * 0.04, 0.5], [x1, -0.45]])
            self.poly(pts, self.facial_hair)

    def eyes(self) -> None:
        a, st = self.a, self.st
        rx = 0.155 + 0.02 * st.eye_size
        ry = 0.038 if a["Narrow_Eyes"] else 0.085 + 0.015 * st.eye_size
        iris = _EYES[int(st.eye_colour * len(_EYES))]
        gaze = 0.03 * (st.gaze - 0.5)
        dx = np.linspace(-rx, rx, 15)
        for sgn in (-1, 1):
            cx, cy = sgn * self.eye_x, self.eye_y
            upper_y = cy - ry * (1 - (dx / rx) ** 2) ** 0.7 - 0.012 * sgn * dx / rx
            lower_y = cy + 0.75 * ry * (1 - (dx / rx) ** 2) ** 0.9
            upper = np.stack([cx + dx, upper_y], axis=1)
            lower = np.stack([cx + dx, lower_y], axis=1)
            if a["Heavy_Makeup"]:
                shadow = _SHADOW[int(st.shadow_colour * len(_SHADOW))]
                lid = np.stack([cx + dx * 1.1, upper_y - 0.09 * (1 - (dx / rx) ** 2) ** 0.5 - 0.01], axis=1)
                self.poly(np.concatenate([upper, lid[::-1]]), (*shadow, 170), 0.1)
            self.poly(np.concatenate([upper, lower[::-1]]), (238, 234, 228), 0.1)

            def clipped(r: float, colour: Colour, ccx: float = cx + gaze, cy: float = cy,
                        upper_y: np.ndarray = upper_y, lower_y: np.ndarray = lower_y, cx: float = cx) -> None:  # fmt: skip
                c = _arc(ccx, cy, r, r, n=20)
                c[:, 0] = np.clip(c[:, 0], cx - rx, cx + rx)
                lo = np.interp(c[:, 0], cx + dx, upper_y)
                hi = np.interp(c[:, 0], cx + dx, lower_y)
                c[:, 1] = np.clip(c[:, 1], lo, hi)
                self.poly(c, colour, 0.1)

            clipped(0.072, iris)
            clipped(0.034, (15, 12, 12))
            liner = 0.05 if a["Heavy_Makeup"] else 0.028 if a["Male"] else 0.036
            self.poly(_stroke(upper, liner), (35, 25, 25), 0.1)
            if a["Heavy_Makeup"]:
                wing = np.array([[cx + sgn * rx * 0.8, upper_y[0 if sgn < 0 else -1] - 0.01],
                                 [cx + sgn * (rx + 0.07), cy - ry - 0.03], [cx + sgn * rx, cy + 0.005]])  # fmt: skip
                self.poly(wing, (35, 25, 25), 0.1)
            self.poly(_stroke(lower, 0.014), _shade(self.skin, 0.6, 120), 0.1)
            self.poly(_arc(cx + gaze + 0.025, cy - 0.025, 0.016, 0.016, n=8), (255, 255, 255, 200), 0.1)

    def brows(self) -> None:
        a, st = self.a, self.st
        colour = _shade(self.hair if not a["Bald"] else self.facial_hair, 0.7)
        if a["Blond_Hair"] or a["Gray_Hair"]:
            colour = _shade(colour, 0.75)
        thick = 0.042 if not a["Male"] else 0.058
        if a["Bushy_Eyebrows"]:
            thick, colour = thick + 0.045, _shade(colour, 0.7)
        arch = 0.13 if a["Arched_Eyebrows"] else 0.018
        base = self.eye_y - 0.19 - 0.02 * st.brow_h - (0.02 if not a["Male"] else 0.0)
        t = np.linspace(0, 1, 14)
        peak = 0.65
        bump = np.where(t < peak, t / peak, 1 - (t - peak) / (1 - peak) * 0.9)
        if not a["Arched_Eyebrows"]:
            bump = np.sin(np.pi * t * 0.9)
        for sgn in (-1, 1):
            x = sgn * (self.eye_x - 0.16 + 0.37 * t)
            y = base - arch * bump + 0.02 * t
            self.poly(_stroke(np.stack([x, y], axis=1), thick * (1.15 - 0.55 * t)), colour, 0.1)

    def nose(self) -> None:
        big = self.a["Big_Nose"]
        w = 0.2 if big else 0.105
        tip = 0.37 if big else 0.3
        dark = _shade(self.skin, 0.45)
        shaded = 1 if self.st.light_dir < 0.5 else -1
        for sgn in (-1, 1):
            # Sides of the nose: both for a big nose (a wide, long shape), only the shadow side otherwise.
            if big or sgn == shaded:
                bridge = np.array(
                    [[sgn * 0.05, self.eye_y + 0.04], [sgn * 0.08, tip - 0.16], [sgn * w * 0.95, tip - 0.04]]
                )
                self.poly(
                    _stroke(bridge, 0.035 if big else 0.03), _shade(self.skin, 0.68, 120 if big else 110), 0.2
                )
            wing = _arc(sgn * w * 0.72, tip - 0.01, w * 0.42, 0.075 * (1.4 if big else 1.0),
                        np.pi / 2 - sgn * np.pi * 0.55, np.pi / 2 + sgn * np.pi * 0.65, 10)  # fmt: skip
            self.poly(
                _stroke(wing, 0.04 if big else 0.022), _shade(self.skin, 0.58 if big else 0.62, 210), 0.2
            )
            self.poly(_arc(sgn * w * 0.45, tip + 0.02, 0.045 * (1.5 if big else 1.0), 0.028 if big else 0.024, n=10),
                      dark, 0.2)  # fmt: skip
        self.poly(
            _arc(0, tip - 0.05, w * 0.45, 0.05 * (1.4 if big else 1.0), n=10),
            _shade(self.skin, 1.12, 120),
            0.2,
        )

    def cheeks(self) -> None:
        a = self.a
        for sgn in (-1, 1):
            c = (sgn * 0.5 * self.W, 0.27)
            if a["Rosy_Cheeks"]:
                self.poly(_arc(*c, 0.2, 0.13, n=16), (225, 60, 80, 115), 0.05)
            elif a["Heavy_Makeup"]:
                self.poly(_arc(*c, 0.19, 0.1, n=16), (215, 110, 120, 55), 0.05)

    def wrinkles(self) -> None:
        if self.a["Young"]:
            return
        line = _shade(self.skin, 0.55, 120)
        for sgn in (-1, 1):
            fold = np.array(
                [[sgn * 0.15, 0.27], [sgn * (self.mouth_w + 0.02), 0.5], [sgn * (self.mouth_w + 0.07), 0.72]]
            )
            self.poly(_stroke(fold, np.array([0.022, 0.032, 0.02])), line, 0.1)
            for k in range(2):
                x = np.array([0.02, 0.06, 0.1]) * sgn + sgn * (self.eye_x + 0.17)
                y = self.eye_y - 0.03 + 0.05 * k + np.array([0.0, 0.01, 0.03]) * (k * 2 - 1)
                self.poly(_stroke(np.stack([x, y], axis=1), 0.018), line, 0.1)
        for k in range(2):
            x = np.linspace(-0.4 * self.W, 0.4 * self.W, 7)
            y = -0.47 - 0.08 * k + 0.02 * np.cos(x * 4)
            self.poly(_stroke(np.stack([x, y], axis=1), 0.02), line, 0.05)

    def mouth(self) -> None:
        a, st = self.a, self.st
        w, y0 = self.mouth_w, self.mouth_y
        x = np.linspace(-w, w, 17)
        r = (x / w) ** 2
        lip = _mix(_shade(self.skin, 0.85), (200, 95, 100), 0.3 + 0.3 * st.lip_colour)
        if a["Wearing_Lipstick"]:
            lip = _LIPSTICK[int(st.lipstick * len(_LIPSTICK))]
        up_t, lo_t = (0.11, 0.15) if a["Big_Lips"] else (0.045, 0.06)
        if not a["Young"]:
            up_t, lo_t = up_t * 0.8, lo_t * 0.8
        if a["Smiling"]:
            curve = y0 - 0.15 * r  # corners up
        else:
            curve = y0 - 0.015 * r + 0.01
        gap_up, gap_lo = curve.copy(), curve.copy()
        if a["Mouth_Slightly_Open"]:
            opening = 0.16 if a["Smiling"] else 0.065
            gap_up = curve - 0.01 * (1 - r)
            gap_lo = curve + opening * (1 - r) ** (0.8 if a["Smiling"] else 1.0)
        upper_lip = np.stack(
            [x, gap_up - up_t * (1 - r**2) * (1 + 0.25 * np.cos(np.pi * x / w * 2.2))], axis=1
        )
        lower_lip = np.stack([x, gap_lo + lo_t * (1 - r**2)], axis=1)
        inner_up = np.stack([x, gap_up], axis=1)
        inner_lo = np.stack([x, gap_lo], axis=1)
        self.poly(np.concatenate([upper_lip, inner_up[::-1]]), lip, 0.1)
        self.poly(np.concatenate([inner_lo, lower_lip[::-1]]), _shade(lip, 1.08), 0.1)
        if a["Mouth_Slightly_Open"]:
            self.poly(np.concatenate([inner_up, inner_lo[::-1]]), (70, 22, 28), 0.1)
            teeth_h = 0.075 if a["Smiling"] else 0.03
            teeth = np.stack([x * 0.92, gap_up + teeth_h * (1 - r) ** 0.5], axis=1)
            self.poly(np.concatenate([inner_up * [0.92, 1], teeth[::-1]]), (244, 240, 230), 0.1)
        else:
            self.poly(_stroke(inner_up, 0.022), _shade(lip, 0.45), 0.1)
        if a["Smiling"]:
            for sgn in (-1, 1):
                dimple = np.array([[sgn * (w + 0.01), curve[0] - 0.05], [sgn * (w + 0.04), curve[0] + 0.02]])
                self.poly(_stroke(dimple, 0.02), _shade(self.skin, 0.6, 130), 0.1)

    def facial_hair_layer(self) -> None:
        a, hair = self.a, self.facial_hair
        beard = not a["No_Beard"] and not a["Goatee"]
        y = np.linspace(0.0, self.Hbot, 14)
        if beard or a["5_o_Clock_Shadow"]:
            grow = 0.07 if beard else 0.0
            outer = np.stack([self.jaw_x(y) + grow, y + grow * (y / self.Hbot) ** 4], axis=1)
            ix = np.array([self.W - 0.04, 0.66 * self.W, 0.42, 0.3])
            iy = np.array([0.14, 0.4, 0.5, 0.62])
            inner = np.stack([ix, iy], axis=1)
            mirror = np.array([-1.0, 1.0])
            region = np.concatenate([outer, (outer * mirror)[::-1], inner * mirror, inner[::-1]])
            self.poly(region, hair if beard else _shade(hair, 0.5, 95))
        if a["Goatee"]:
            gx = np.linspace(-0.24, 0.24, 11)
            top = np.stack([gx, self.mouth_y + 0.1 + 0.03 * (gx / 0.24) ** 2], axis=1)
            bottom = np.stack([gx * 0.8, self.Hbot + 0.06 - 0.3 * (gx / 0.24) ** 2], axis=1)
            self.poly(np.concatenate([top, bottom[::-1]]), hair, 0.05)

    def mustache(self) -> None:
        if not self.a["Mustache"]:
            return
        w, y0 = self.mouth_w + 0.05, self.mouth_y - 0.04
        x = np.linspace(-w, w, 15)
        r = np.abs(x / w)
        smile = 0.09 if self.a["Smiling"] else 0.0
        top = np.stack([x, y0 - 0.15 + 0.06 * r**2 - 0.02 * (1 - r)], axis=1)
        bottom = np.stack([x, y0 + 0.06 * r**2 - smile * r**2 + 0.005], axis=1)
        self.poly(np.concatenate([top, bottom[::-1]]), self.facial_hair, 0.15)

    # ------------------------------------------------------------------------------------- hair, hat
    def front_hair(self) -> None:
        a, st, W = self.a, self.st, self.W
        if a["Bald"]:
            return
        v = 0.07 + 0.1 * st.hair_volume + (0.05 if a["Wavy_Hair"] else 0.0)
        side_y = 0.28 if self.long_hair else -0.12
        side_v = v if self.long_hair else 0.6 * v  # short hair: thin over the ears, volume on top
        t0 = np.arcsin(np.clip(side_y / (self.Htop + v), -1, 1))
        t = np.linspace(t0, np.pi - t0, 40)
        rad = 1 + (0.035 * np.sin(18 * t + 6 * st.curl_phase) if a["Wavy_Hair"] else 0.0)
        outer = np.stack([(W + side_v) * np.cos(t) * rad, -(self.Htop + v * 1.3) * np.sin(t) * rad], axis=1)
        x = np.linspace(-W * 0.99, W * 0.99, 31)
        ax = np.abs(x) / W
        part = 0.25 * (st.part - 0.5)
        if a["Bangs"]:
            hl = self.eye_y - 0.36 + 0.05 * (x / W) * np.sign(part)  # a fringe above the brows
            hairline = hl + 0.045 * np.abs(np.sin(x * 11 + 3 * st.curl_phase)) + (side_y - hl) * ax**6
        else:
            hl = -0.62 - 0.06 * st.hair_length
            if a["Receding_Hairline"]:
                hl = -0.84
            hairline = hl + 0.05 * np.exp(-(((x - part) / 0.2) ** 2)) + (side_y - hl) * ax**3.5
            if a["Receding_Hairline"]:
                hairline -= 0.22 * np.exp(-(((np.abs(x) - 0.52 * W) / 0.17) ** 2))
        inner = np.stack([x, hairline], axis=1)
        self.poly(np.concatenate([outer, inner]), self.hair)
        strand = _shade(self.hair, 0.72 if a["Gray_Hair"] or a["Blond_Hair"] else 1.35, 150)
        for k in range(5 if a["Wavy_Hair"] or st.hair_volume > 0.3 else 0):
            x0 = part + (k - 2) * 0.22 * W
            ys = np.linspace(-self.Htop - v * 0.8, (hairline.min() if a["Bangs"] else hl) - 0.04, 8)
            wob = 0.06 * np.sin(ys * 12 + k) if a["Wavy_Hair"] else 0.0
            xs = x0 + (x0 - part) * 0.3 * (ys + self.Htop) + wob
            self.poly(_stroke(np.stack([xs, ys], axis=1), 0.025), strand)
        if self.long_hair and st.locks < 0.6:
            length = min(self.hair_len, 1.35)
            ys = np.linspace(-0.3, length, 12)
            wave = 0.05 * np.sin(10 * ys + 6 * st.curl_phase) if a["Wavy_Hair"] else np.zeros_like(ys)
            for sgn in (-1, 1):
                outer_x = sgn * (W + v * 0.8) + wave
                inner_x = sgn * (W - 0.13 + 0.05 * np.clip(ys, 0, None)) + wave
                pts = np.concatenate([np.stack([outer_x, ys], axis=1), np.stack([inner_x, ys], axis=1)[::-1]])
                self.poly(pts, self.hair)

    def hat(self) -> None:
        if not self.a["Wearing_Hat"]:
            return
        st, W = self.st, self.W
        colour = _hsv(st.hat_hue, 0.35 + 0.45 * st.shirt, 0.2 + 0.7 * st.hat_value)
        kind = int(st.hat_type * 3)
        if kind == 0:  # beanie
            dome = _arc(0, -0.6, W + 0.16, self.Htop - 0.05, np.pi, 2 * np.pi, 24)
            self.poly(dome, colour)
            band = np.array([[-W - 0.19, -0.82], [W + 0.19, -0.82], [W + 0.2, -0.52], [-W - 0.2, -0.52]])
            self.poly(band, _shade(colour, 0.78))
            for k in range(-4, 5):
                self.line(np.array([[k * 0.2, -0.8], [k * 0.2, -0.55]]), _shade(colour, 0.6), 0.025)
        elif kind == 1:  # brimmed hat
            crown = np.array(
                [[-W * 0.82, -0.72], [-W * 0.75, -1.62], [0, -1.68], [W * 0.75, -1.62], [W * 0.82, -0.72]]
            )
            self.poly(crown, colour)
            self.poly(np.array([[-W * 0.8, -0.92], [W * 0.8, -0.92], [W * 0.82, -0.75], [-W * 0.82, -0.75]]),
                      _shade(colour, 0.5))  # fmt: skip
            self.poly(_arc(0, -0.68, W + 0.55, 0.13, n=28), _shade(colour, 0.85))
        else:  # cap with a visor
            self.poly(_arc(0, -0.62, W + 0.1, self.Htop - 0.1, np.pi, 2 * np.pi, 24), colour)
            visor = _arc(0, -0.64, W + 0.05, 0.2, 0, np.pi, 16)
            self.poly(visor, _shade(colour, 0.75))
            self.poly(_arc(0, -1.35, 0.07, 0.05, n=8), _shade(colour, 0.6))

    def glasses(self) -> None:
        if not self.a["Eyeglasses"]:
            return
        st = self.st
        frame = _FRAMES[int(st.frame_colour * len(_FRAMES))]
        rx, ry = 0.25, 0.18
        y = self.eye_y + 0.01
        n = 2.0 if st.frame_shape < 0.4 else 4.0
        t = np.linspace(0, 2 * np.pi, 33)
        c, s = np.cos(t), np.sin(t)
        ring = np.stack(
            [rx * np.sign(c) * np.abs(c) ** (2 / n), ry * np.sign(s) * np.abs(s) ** (2 / n)], axis=1
        )
        tint = (25, 25, 30, 215) if st.glasses_dark < 0.3 else (200, 220, 235, 45)
        width = 0.045 if st.frame_shape < 0.7 else 0.065
        for sgn in (-1, 1):
            lens = ring + [sgn * self.eye_x, y]
            self.poly(lens, tint, 0.1)
            self.line(np.concatenate([lens, lens[:1]]), frame, width, 0.1)
            arm = np.array([[sgn * (self.eye_x + rx), y - 0.05], [sgn * (self.W + 0.02), y - 0.02]])
            self.line(arm, frame, width * 0.8, 0.05)
        bridge = np.array(
            [[-self.eye_x + rx * 0.95, y - 0.04], [0, y - 0.08], [self.eye_x - rx * 0.95, y - 0.04]]
        )
        self.line(bridge, frame, width, 0.12)

    def earrings(self) -> None:
        if not self.a["Wearing_Earrings"]:
            return
        st = self.st
        metal = _METAL[int(st.metal * len(_METAL))]
        for sgn in (-1, 1):
            x = sgn * (self.W - 0.01)
            depth = -0.3 * sgn
            if st.earring < 0.4:  # hoop
                self.line(_arc(x, 0.42, 0.085, 0.1, n=16), metal, 0.035, depth)
            else:  # drop
                self.line(np.array([[x, 0.3], [x, 0.42]]), metal, 0.025, depth)
                self.poly(_arc(x, 0.46, 0.055, 0.065, n=10), metal, depth)

    def render(self) -> Image.Image:
        for part in (self.background, self.clothes, self.back_hair, self.neck, self.neckwear, self.ears,
                     self.head, self.wrinkles, self.cheeks, self.eyes, self.brows, self.nose,
                     self.facial_hair_layer, self.mouth, self.mustache, self.front_hair, self.sideburns,
                     self.hat, self.glasses, self.earrings):  # fmt: skip
            part()
        return self.img


def render_face(attrs: dict[str, bool], rng: np.random.Generator, resolution: int = 64) -> np.ndarray:
    """Render one face with the given attributes as a uint8 (resolution, resolution, 3) array.

    Missing attributes are False (No_Beard defaults to True); the nuisance factors (pose, scale,
    skin, colours, background, lighting) come from ``rng``, which is consumed identically whatever
    ``attrs`` says, so toggling one attribute with the same seed changes only that attribute.
    """
    if resolution < 8:
        raise ValueError(f"resolution must be >= 8 pixels, got {resolution}")
    full = _check_attrs(attrs)
    st = SimpleNamespace(**dict(zip(_STYLE_FIELDS, rng.random(len(_STYLE_FIELDS)).tolist())))
    canvas = 4 * resolution
    # reducing_gap: a 2x box reduction before LANCZOS halves the cost and is visually identical.
    img = (
        _Face(full, st, canvas)
        .render()
        .resize((resolution, resolution), Image.Resampling.LANCZOS, reducing_gap=2.0)
    )
    # Simple directional lighting and a vignette: faces are not flat-lit stickers.
    g = np.linspace(-1.0, 1.0, resolution)
    ang = 2 * np.pi * st.light_dir
    light = 1 + (0.06 + 0.12 * st.light_k) * (np.cos(ang) * g[None, :] + np.sin(ang) * g[:, None])
    light -= 0.07 * (g[None, :] ** 2 + g[:, None] ** 2)
    out = np.clip(np.asarray(img, dtype=np.float32) * light[..., None], 0, 255).astype(np.uint8)
    if full["Blurry"]:
        radius = resolution / 64 * (1.1 + 0.7 * st.blur)
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(radius)))
    return out


def _face_rng(seed: int, index: int) -> np.random.Generator:
    """Independent generator per image, so images do not depend on how work is split across workers."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def _labels(attrs: dict[str, bool]) -> np.ndarray:
    return np.array([1 if attrs.get(a, False) else -1 for a in CELEBA_ATTRIBUTES], dtype=np.int8)


def _render_chunk(job: tuple[str, int, int, int, int]) -> tuple[int, np.ndarray]:
    """Worker: render and save images ``start..stop-1`` (0-based) and return their 40 labels."""
    img_dir, seed, start, stop, resolution = job
    rows = np.empty((stop - start, len(CELEBA_ATTRIBUTES)), dtype=np.int8)
    for i in range(start, stop):
        rng = _face_rng(seed, i)
        attrs = sample_attributes(rng)
        Image.fromarray(render_face(attrs, rng, resolution)).save(
            Path(img_dir) / _image_name(i), format="PNG", compress_level=3
        )
        rows[i - start] = _labels(attrs)
    return start, rows


# --------------------------------------------------------------------------------------------------
# Dataset folder
# --------------------------------------------------------------------------------------------------
def _image_name(index: int) -> str:
    return f"{index + 1:06d}.png"


_OWN_IMAGE = re.compile(r"^\d{6}\.png$")


def _read_meta(root: Path) -> dict | None:
    try:
        meta = json.loads((root / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def is_complete(root: str | Path, n: int, resolution: int, seed: int, *,
                split_fractions: tuple[float, float, float] | None = None) -> bool:  # fmt: skip
    """True when ``root`` holds a finished synthfaces dataset made with exactly these parameters.

    ``synthfaces.json`` is written last, so its presence with matching parameters (and the last image
    and both label files) means the generation ran to the end.
    """
    root = Path(root)
    meta = _read_meta(root)
    if meta is None:
        return False
    wanted = {
        "n": n,
        "resolution": resolution,
        "seed": seed,
        "version": VERSION,
        "attributes": list(ATTRIBUTES),
    }
    if split_fractions is not None:
        wanted["split_fractions"] = [float(f) for f in split_fractions]
    if any(meta.get(k) != v for k, v in wanted.items()):
        return False
    files = (root / ATTR_FILE, root / PARTITION_FILE, root / IMAGE_DIR / _image_name(n - 1))
    return all(f.is_file() for f in files)


def _clear(root: Path) -> None:
    """Remove what a previous (partial or different) synthfaces run left, and nothing else."""
    img_dir = root / IMAGE_DIR
    if img_dir.is_dir():
        foreign = [p.name for p in img_dir.iterdir() if not _OWN_IMAGE.match(p.name)]
        if foreign:
            raise FileExistsError(
                f"{img_dir} holds files synthfaces did not write (e.g. {foreign[0]!r}); it looks like a real "
                "dataset. Give generate_synthfaces an empty or synthfaces-only folder."
            )
    leftovers = [root / f for f in (META_FILE, META_FILE + ".tmp", ATTR_FILE, PARTITION_FILE)]
    images = sorted(img_dir.iterdir()) if img_dir.is_dir() else []
    if images or any(f.exists() for f in leftovers):
        print(
            f"synthfaces: {root} holds an incomplete or different dataset; regenerating it.", file=sys.stderr
        )
    for f in images + leftovers:
        f.unlink(missing_ok=True)


def _partition(n: int, split_fractions: tuple[float, float, float]) -> np.ndarray:
    """Contiguous train/val/test blocks, like CelebA's official partition."""
    n_train = int(round(n * split_fractions[0]))
    n_val = min(n - n_train, int(round(n * split_fractions[1])))
    return np.repeat([0, 1, 2], [n_train, n_val, n - n_train - n_val])


def _write_lists(root: Path, labels: np.ndarray, split: np.ndarray) -> None:
    lines = [str(len(labels)), " ".join(CELEBA_ATTRIBUTES)]
    lines += [
        _image_name(i) + " " + " ".join(f"{v:2d}" for v in row) for i, row in enumerate(labels.tolist())
    ]
    (root / ATTR_FILE).write_text("\n".join(lines) + "\n")
    (root / PARTITION_FILE).write_text(
        "".join(f"{_image_name(i)} {s}\n" for i, s in enumerate(split.tolist()))
    )


def _run_jobs(jobs: list[tuple[str, int, int, int, int]], workers: int) -> Iterator[tuple[int, np.ndarray]]:
    if workers == 1 or len(jobs) == 1:
        yield from map(_render_chunk, jobs)
        return
    # The platform's default start method (fork on Linux): spawn/forkserver would re-import the caller's
    # __main__ (breaking `python -`, unguarded scripts); the workers touch only numpy and PIL.
    with multiprocessing.get_context().Pool(workers) as pool:
        yield from pool.imap_unordered(_render_chunk, jobs)


def generate_synthfaces(
    root: str | Path,
    n: int = 10000,
    resolution: int = 64,
    seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write a synthfaces dataset in CelebA layout under ``root`` and return ``root``.

    A finished dataset with the same parameters is reused as is; a partial or different one is
    replaced (with a message on stderr). ``synthfaces.json`` is written last and atomically, so an
    interrupted run is never mistaken for a finished one.
    """
    root = Path(root)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if resolution < 8:
        raise ValueError(f"resolution must be >= 8 pixels, got {resolution}")
    fractions = tuple(float(f) for f in split_fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"split_fractions must be three non-negative numbers summing to 1, got {split_fractions}"
        )
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if is_complete(root, n, resolution, seed, split_fractions=fractions):
        return root
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / LOCK_FILE):  # two runs (multirun jobs, tests) asking for the same folder at once
        if is_complete(root, n, resolution, seed, split_fractions=fractions):
            return root  # the other run finished it while this one waited
        _render(root, n, resolution, seed, fractions, workers, progress)
    return root


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An advisory lock file held for the block (no-op where fcntl does not exist)."""
    try:
        import fcntl
    except ImportError:  # Windows: no concurrent-render protection
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _render(
    root: Path, n: int, resolution: int, seed: int, fractions: tuple[float, ...], workers: int, progress: bool
) -> None:
    _clear(root)
    img_dir = root / IMAGE_DIR
    img_dir.mkdir(parents=True, exist_ok=True)

    chunk = max(1, min(250, n // (8 * workers)))
    jobs = [(str(img_dir), seed, a, min(a + chunk, n), resolution) for a in range(0, n, chunk)]
    labels = np.empty((n, len(CELEBA_ATTRIBUTES)), dtype=np.int8)
    results = _run_jobs(jobs, workers)
    if progress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("synthfaces"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True)) as bar:
            task = bar.add_task("render", total=n)
            for start, rows in results:
                labels[start : start + len(rows)] = rows
                bar.advance(task, len(rows))
    else:
        for start, rows in results:
            labels[start : start + len(rows)] = rows

    _write_lists(root, labels, _partition(n, fractions))
    meta = {"n": n, "resolution": resolution, "seed": seed, "split_fractions": list(fractions),
            "attributes": list(ATTRIBUTES), "version": VERSION}  # fmt: skip
    tmp = root / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, root / META_FILE)
