"""What a face wears, and what is behind it: background, clothes, neckwear, hat, glasses, earrings."""

from __future__ import annotations

import numpy as np
from PIL import Image

from genface.data.synthfaces.canvas import NECK_BASE, Face, arc, hsv, mix, shade

_METAL = ((222, 182, 70), (208, 210, 222), (240, 238, 228))
_FRAMES = ((20, 20, 22), (70, 40, 25), (150, 150, 160), (120, 25, 35))


def background(face: Face) -> None:
    st, n = face.st, face.canvas
    c1 = np.array(hsv(st.bg_hue1, 0.1 + 0.4 * st.bg_sat, 0.35 + 0.6 * st.bg_val1), dtype=float)
    c2 = np.array(hsv(st.bg_hue2, 0.1 + 0.4 * st.bg_sat, 0.35 + 0.6 * st.bg_val2), dtype=float)
    ang = 2 * np.pi * st.bg_dir
    g = np.linspace(-0.5, 0.5, n // 4)
    t = np.clip(np.cos(ang) * g[None, :] + np.sin(ang) * g[:, None] + 0.5, 0, 1)[..., None]
    # At output resolution, blown up to the canvas: each 4x4 block becomes one output pixel again.
    small = Image.fromarray((c1 + (c2 - c1) * t).astype(np.uint8))
    face.img.paste(small.resize((n, n), Image.Resampling.NEAREST))


def clothes(face: Face) -> None:
    st = face.st
    colour = hsv(st.clothes_hue, 0.25 + 0.5 * st.shirt, 0.15 + 0.75 * st.clothes_value)
    sx = np.linspace(-2.6, -face.neck_w - 0.12, 10)
    shoulder = np.stack([sx, NECK_BASE + 0.55 * ((-sx - face.neck_w) / 2.2) ** 1.5], axis=1)
    pts = np.concatenate([[[-2.6, 2.8]], shoulder, face.neckline(), shoulder[::-1] * [-1, 1], [[2.6, 2.8]]])
    face.poly(pts, colour)


def neckwear(face: Face) -> None:
    a, st = face.a, face.st
    if a["Wearing_Necktie"]:
        shirt = mix((250, 250, 250), (175, 200, 235), st.shirt)
        w = face.neck_w
        face.poly(np.array([[-w - 0.12, NECK_BASE], [w + 0.12, NECK_BASE], [0.0, 2.7]]), shirt)
        face.poly(np.array([[-w - 0.1, 1.36], [-0.02, 1.56], [-w * 0.4, 1.72]]), shade(shirt, 0.9))
        face.poly(np.array([[w + 0.1, 1.36], [0.02, 1.56], [w * 0.4, 1.72]]), shade(shirt, 0.9))
        tie = hsv(st.tie_colour, 0.75, 0.35 + 0.5 * st.clothes_value)
        face.poly(np.array([[-0.11, 1.44], [0.11, 1.44], [0.08, 1.6], [-0.08, 1.6]]), shade(tie, 0.85))
        face.poly(np.array([[-0.08, 1.6], [0.08, 1.6], [0.2, 2.3], [0.0, 2.45], [-0.2, 2.3]]), tie)
    if a["Wearing_Necklace"]:
        metal = _METAL[int(st.metal * len(_METAL))]
        w = face.neck_w + 0.04
        x = np.linspace(-w, w, 17)
        chain = np.stack([x, 1.38 + 0.22 * (1 - (x / w) ** 2)], axis=1)
        face.line(chain, shade(metal, 0.8), 0.045)
        face.poly(arc(0, 1.66, 0.07, 0.08, n=12), metal)


def hat(face: Face) -> None:
    if not face.a["Wearing_Hat"]:
        return
    st, W = face.st, face.W
    colour = hsv(st.hat_hue, 0.35 + 0.45 * st.shirt, 0.2 + 0.7 * st.hat_value)
    kind = int(st.hat_type * 3)
    if kind == 0:  # beanie
        dome = arc(0, -0.6, W + 0.16, face.Htop - 0.05, np.pi, 2 * np.pi, 24)
        face.poly(dome, colour)
        band = np.array([[-W - 0.19, -0.82], [W + 0.19, -0.82], [W + 0.2, -0.52], [-W - 0.2, -0.52]])
        face.poly(band, shade(colour, 0.78))
        for k in range(-4, 5):
            face.line(np.array([[k * 0.2, -0.8], [k * 0.2, -0.55]]), shade(colour, 0.6), 0.025)
    elif kind == 1:  # brimmed hat
        crown = np.array(
            [[-W * 0.82, -0.72], [-W * 0.75, -1.62], [0, -1.68], [W * 0.75, -1.62], [W * 0.82, -0.72]]
        )
        face.poly(crown, colour)
        face.poly(np.array([[-W * 0.8, -0.92], [W * 0.8, -0.92], [W * 0.82, -0.75], [-W * 0.82, -0.75]]),
                  shade(colour, 0.5))  # fmt: skip
        face.poly(arc(0, -0.68, W + 0.55, 0.13, n=28), shade(colour, 0.85))
    else:  # cap with a visor
        face.poly(arc(0, -0.62, W + 0.1, face.Htop - 0.1, np.pi, 2 * np.pi, 24), colour)
        visor = arc(0, -0.64, W + 0.05, 0.2, 0, np.pi, 16)
        face.poly(visor, shade(colour, 0.75))
        face.poly(arc(0, -1.35, 0.07, 0.05, n=8), shade(colour, 0.6))


def glasses(face: Face) -> None:
    if not face.a["Eyeglasses"]:
        return
    st = face.st
    frame = _FRAMES[int(st.frame_colour * len(_FRAMES))]
    rx, ry = 0.25, 0.18
    y = face.eye_y + 0.01
    n = 2.0 if st.frame_shape < 0.4 else 4.0
    t = np.linspace(0, 2 * np.pi, 33)
    c, s = np.cos(t), np.sin(t)
    ring = np.stack([rx * np.sign(c) * np.abs(c) ** (2 / n), ry * np.sign(s) * np.abs(s) ** (2 / n)], axis=1)
    tint = (25, 25, 30, 215) if st.glasses_dark < 0.3 else (200, 220, 235, 45)
    width = 0.045 if st.frame_shape < 0.7 else 0.065
    for sgn in (-1, 1):
        lens = ring + [sgn * face.eye_x, y]
        face.poly(lens, tint, 0.1)
        face.line(np.concatenate([lens, lens[:1]]), frame, width, 0.1)
        arm = np.array([[sgn * (face.eye_x + rx), y - 0.05], [sgn * (face.W + 0.02), y - 0.02]])
        face.line(arm, frame, width * 0.8, 0.05)
    bridge = np.array(
        [[-face.eye_x + rx * 0.95, y - 0.04], [0, y - 0.08], [face.eye_x - rx * 0.95, y - 0.04]]
    )
    face.line(bridge, frame, width, 0.12)


def earrings(face: Face) -> None:
    if not face.a["Wearing_Earrings"]:
        return
    st = face.st
    metal = _METAL[int(st.metal * len(_METAL))]
    for sgn in (-1, 1):
        x = sgn * (face.W - 0.01)
        depth = -0.3 * sgn
        if st.earring < 0.4:  # hoop
            face.line(arc(x, 0.42, 0.085, 0.1, n=16), metal, 0.035, depth)
        else:  # drop
            face.line(np.array([[x, 0.3], [x, 0.42]]), metal, 0.025, depth)
            face.poly(arc(x, 0.46, 0.055, 0.065, n=10), metal, depth)
