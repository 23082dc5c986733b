"""The skin and the features of a face: neck, ears, head, wrinkles, cheeks, eyes, brows, nose, mouth."""

from __future__ import annotations

import numpy as np

from genface.data.synthfaces.canvas import NECK_BASE, Colour, Face, arc, mix, shade, stroke

_EYES = ((88, 56, 32), (46, 32, 24), (70, 120, 175), (80, 125, 80), (125, 98, 52), (105, 125, 140))
_LIPSTICK = ((185, 20, 40), (215, 70, 115), (135, 20, 60), (225, 90, 80))
_SHADOW = ((120, 60, 135), (120, 80, 60), (70, 95, 165), (55, 45, 60))


def neck(face: Face) -> None:
    w = face.neck_w
    top = NECK_BASE - 0.02
    pts = np.concatenate([[[-w, 0.5], [-w, top]], face.neckline(), [[w, top], [w, 0.5]]])
    face.poly(pts, shade(face.skin, 0.9))
    # shadow under the chin so that the jaw reads against the neck
    face.poly(arc(0, face.Hbot - 0.08, w * 1.05, 0.24, 0, np.pi, 16), shade(face.skin, 0.55, 80))


def ears(face: Face) -> None:
    for sgn in (-1, 1):
        cx = sgn * (face.W - 0.03)
        depth = -0.3 * sgn
        face.poly(arc(cx, 0.08, 0.13, 0.23, n=16), shade(face.skin, 0.93), depth)
        face.poly(arc(cx + sgn * 0.03, 0.08, 0.06, 0.14, n=12), shade(face.skin, 0.72), depth)


def head(face: Face) -> None:
    if face.a["Chubby"]:  # a second chin below the first
        face.poly(arc(0, face.Hbot + 0.03, 0.5 * face.W, 0.13, n=20), shade(face.skin, 0.95))
        face.poly(stroke(arc(0, face.Hbot + 0.03, 0.5 * face.W, 0.13, 0.15 * np.pi, 0.85 * np.pi, 12), 0.03),
                  shade(face.skin, 0.5, 110))  # fmt: skip
    face.poly(face.outline(), face.skin)
    if face.a["Bald"]:
        face.poly(arc(-0.2, -0.95, 0.32, 0.14, n=16), shade(face.skin, 1.25, 140))


def wrinkles(face: Face) -> None:
    if face.a["Young"]:
        return
    line = shade(face.skin, 0.55, 120)
    for sgn in (-1, 1):
        fold = np.array(
            [[sgn * 0.15, 0.27], [sgn * (face.mouth_w + 0.02), 0.5], [sgn * (face.mouth_w + 0.07), 0.72]]
        )
        face.poly(stroke(fold, np.array([0.022, 0.032, 0.02])), line, 0.1)
        for k in range(2):
            x = np.array([0.02, 0.06, 0.1]) * sgn + sgn * (face.eye_x + 0.17)
            y = face.eye_y - 0.03 + 0.05 * k + np.array([0.0, 0.01, 0.03]) * (k * 2 - 1)
            face.poly(stroke(np.stack([x, y], axis=1), 0.018), line, 0.1)
    for k in range(2):
        x = np.linspace(-0.4 * face.W, 0.4 * face.W, 7)
        y = -0.47 - 0.08 * k + 0.02 * np.cos(x * 4)
        face.poly(stroke(np.stack([x, y], axis=1), 0.02), line, 0.05)


def cheeks(face: Face) -> None:
    a = face.a
    for sgn in (-1, 1):
        c = (sgn * 0.5 * face.W, 0.27)
        if a["Rosy_Cheeks"]:
            face.poly(arc(*c, 0.2, 0.13, n=16), (225, 60, 80, 115), 0.05)
        elif a["Heavy_Makeup"]:
            face.poly(arc(*c, 0.19, 0.1, n=16), (215, 110, 120, 55), 0.05)


def eyes(face: Face) -> None:
    a, st = face.a, face.st
    rx = 0.155 + 0.02 * st.eye_size
    ry = 0.038 if a["Narrow_Eyes"] else 0.085 + 0.015 * st.eye_size
    iris = _EYES[int(st.eye_colour * len(_EYES))]
    gaze = 0.03 * (st.gaze - 0.5)
    dx = np.linspace(-rx, rx, 15)
    for sgn in (-1, 1):
        cx, cy = sgn * face.eye_x, face.eye_y
        upper_y = cy - ry * (1 - (dx / rx) ** 2) ** 0.7 - 0.012 * sgn * dx / rx
        lower_y = cy + 0.75 * ry * (1 - (dx / rx) ** 2) ** 0.9
        upper = np.stack([cx + dx, upper_y], axis=1)
        lower = np.stack([cx + dx, lower_y], axis=1)
        if a["Heavy_Makeup"]:
            shadow = _SHADOW[int(st.shadow_colour * len(_SHADOW))]
            lid = np.stack([cx + dx * 1.1, upper_y - 0.09 * (1 - (dx / rx) ** 2) ** 0.5 - 0.01], axis=1)
            face.poly(np.concatenate([upper, lid[::-1]]), (*shadow, 170), 0.1)
        face.poly(np.concatenate([upper, lower[::-1]]), (238, 234, 228), 0.1)

        def clipped(r: float, colour: Colour, ccx: float = cx + gaze, cy: float = cy,
                    upper_y: np.ndarray = upper_y, lower_y: np.ndarray = lower_y, cx: float = cx) -> None:  # fmt: skip
            c = arc(ccx, cy, r, r, n=20)
            c[:, 0] = np.clip(c[:, 0], cx - rx, cx + rx)
            lo = np.interp(c[:, 0], cx + dx, upper_y)
            hi = np.interp(c[:, 0], cx + dx, lower_y)
            c[:, 1] = np.clip(c[:, 1], lo, hi)
            face.poly(c, colour, 0.1)

        clipped(0.072, iris)
        clipped(0.034, (15, 12, 12))
        liner = 0.05 if a["Heavy_Makeup"] else 0.028 if a["Male"] else 0.036
        face.poly(stroke(upper, liner), (35, 25, 25), 0.1)
        if a["Heavy_Makeup"]:
            wing = np.array([[cx + sgn * rx * 0.8, upper_y[0 if sgn < 0 else -1] - 0.01],
                             [cx + sgn * (rx + 0.07), cy - ry - 0.03], [cx + sgn * rx, cy + 0.005]])  # fmt: skip
            face.poly(wing, (35, 25, 25), 0.1)
        face.poly(stroke(lower, 0.014), shade(face.skin, 0.6, 120), 0.1)
        face.poly(arc(cx + gaze + 0.025, cy - 0.025, 0.016, 0.016, n=8), (255, 255, 255, 200), 0.1)


def brows(face: Face) -> None:
    a, st = face.a, face.st
    colour = shade(face.hair if not a["Bald"] else face.facial_hair, 0.7)
    if a["Blond_Hair"] or a["Gray_Hair"]:
        colour = shade(colour, 0.75)
    thick = 0.042 if not a["Male"] else 0.058
    if a["Bushy_Eyebrows"]:
        thick, colour = thick + 0.045, shade(colour, 0.7)
    arch = 0.13 if a["Arched_Eyebrows"] else 0.018
    base = face.eye_y - 0.19 - 0.02 * st.brow_h - (0.02 if not a["Male"] else 0.0)
    t = np.linspace(0, 1, 14)
    peak = 0.65
    bump = np.where(t < peak, t / peak, 1 - (t - peak) / (1 - peak) * 0.9)
    if not a["Arched_Eyebrows"]:
        bump = np.sin(np.pi * t * 0.9)
    for sgn in (-1, 1):
        x = sgn * (face.eye_x - 0.16 + 0.37 * t)
        y = base - arch * bump + 0.02 * t
        face.poly(stroke(np.stack([x, y], axis=1), thick * (1.15 - 0.55 * t)), colour, 0.1)


def nose(face: Face) -> None:
    big = face.a["Big_Nose"]
    w = 0.2 if big else 0.105
    tip = 0.37 if big else 0.3
    dark = shade(face.skin, 0.45)
    shaded = 1 if face.st.light_dir < 0.5 else -1
    for sgn in (-1, 1):
        # Sides of the nose: both for a big nose (a wide, long shape), only the shadow side otherwise.
        if big or sgn == shaded:
            bridge = np.array(
                [[sgn * 0.05, face.eye_y + 0.04], [sgn * 0.08, tip - 0.16], [sgn * w * 0.95, tip - 0.04]]
            )
            face.poly(
                stroke(bridge, 0.035 if big else 0.03), shade(face.skin, 0.68, 120 if big else 110), 0.2
            )
        wing = arc(sgn * w * 0.72, tip - 0.01, w * 0.42, 0.075 * (1.4 if big else 1.0),
                    np.pi / 2 - sgn * np.pi * 0.55, np.pi / 2 + sgn * np.pi * 0.65, 10)  # fmt: skip
        face.poly(stroke(wing, 0.04 if big else 0.022), shade(face.skin, 0.58 if big else 0.62, 210), 0.2)
        face.poly(arc(sgn * w * 0.45, tip + 0.02, 0.045 * (1.5 if big else 1.0), 0.028 if big else 0.024, n=10),
                  dark, 0.2)  # fmt: skip
    face.poly(
        arc(0, tip - 0.05, w * 0.45, 0.05 * (1.4 if big else 1.0), n=10),
        shade(face.skin, 1.12, 120),
        0.2,
    )


def mouth(face: Face) -> None:
    a, st = face.a, face.st
    w, y0 = face.mouth_w, face.mouth_y
    x = np.linspace(-w, w, 17)
    r = (x / w) ** 2
    lip = mix(shade(face.skin, 0.85), (200, 95, 100), 0.3 + 0.3 * st.lip_colour)
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
    upper_lip = np.stack([x, gap_up - up_t * (1 - r**2) * (1 + 0.25 * np.cos(np.pi * x / w * 2.2))], axis=1)
    lower_lip = np.stack([x, gap_lo + lo_t * (1 - r**2)], axis=1)
    inner_up = np.stack([x, gap_up], axis=1)
    inner_lo = np.stack([x, gap_lo], axis=1)
    face.poly(np.concatenate([upper_lip, inner_up[::-1]]), lip, 0.1)
    face.poly(np.concatenate([inner_lo, lower_lip[::-1]]), shade(lip, 1.08), 0.1)
    if a["Mouth_Slightly_Open"]:
        face.poly(np.concatenate([inner_up, inner_lo[::-1]]), (70, 22, 28), 0.1)
        teeth_h = 0.075 if a["Smiling"] else 0.03
        teeth = np.stack([x * 0.92, gap_up + teeth_h * (1 - r) ** 0.5], axis=1)
        face.poly(np.concatenate([inner_up * [0.92, 1], teeth[::-1]]), (244, 240, 230), 0.1)
    else:
        face.poly(stroke(inner_up, 0.022), shade(lip, 0.45), 0.1)
    if a["Smiling"]:
        for sgn in (-1, 1):
            dimple = np.array([[sgn * (w + 0.01), curve[0] - 0.05], [sgn * (w + 0.04), curve[0] + 0.02]])
            face.poly(stroke(dimple, 0.02), shade(face.skin, 0.6, 130), 0.1)
