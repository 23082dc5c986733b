"""Hair on the head and on the face: back and front hair, sideburns, beard and stubble, mustache."""

from __future__ import annotations

import numpy as np

from genface.data.synthfaces.canvas import Face, shade, stroke


def back_hair(face: Face) -> None:
    if face.a["Bald"] or not face.long_hair:
        return
    st, W = face.st, face.W
    v = 0.12 + 0.12 * st.hair_volume
    length = face.hair_len
    t = np.linspace(0, -np.pi, 30)
    top = np.stack([(W + v) * np.cos(t), (face.Htop + v) * np.sin(t)], axis=1)
    y = np.linspace(0, length, 14)
    wave = 0.05 * np.sin(9 * y + 6 * st.curl_phase) if face.a["Wavy_Hair"] else 0.0
    side = np.stack([W + v + 0.18 * y / length + wave, y], axis=1)
    # Two curtains that fall in front of the shoulders; the middle stays behind the neck.
    inner = face.neck_w - 0.02
    bottom = np.array([[inner + 0.1, length + 0.05], [inner, length - 0.1], [inner, 1.1]])
    right = np.concatenate([side, bottom])
    pts = np.concatenate([right[::-1], top, right * [-1, 1]])
    face.poly(pts, shade(face.hair, 0.8))


def front_hair(face: Face) -> None:
    a, st, W = face.a, face.st, face.W
    if a["Bald"]:
        return
    v = 0.07 + 0.1 * st.hair_volume + (0.05 if a["Wavy_Hair"] else 0.0)
    side_y = 0.28 if face.long_hair else -0.12
    side_v = v if face.long_hair else 0.6 * v  # short hair: thin over the ears, volume on top
    t0 = np.arcsin(np.clip(side_y / (face.Htop + v), -1, 1))
    t = np.linspace(t0, np.pi - t0, 40)
    rad = 1 + (0.035 * np.sin(18 * t + 6 * st.curl_phase) if a["Wavy_Hair"] else 0.0)
    outer = np.stack([(W + side_v) * np.cos(t) * rad, -(face.Htop + v * 1.3) * np.sin(t) * rad], axis=1)
    x = np.linspace(-W * 0.99, W * 0.99, 31)
    ax = np.abs(x) / W
    part = 0.25 * (st.part - 0.5)
    if a["Bangs"]:
        hl = face.eye_y - 0.36 + 0.05 * (x / W) * np.sign(part)  # a fringe above the brows
        hairline = hl + 0.045 * np.abs(np.sin(x * 11 + 3 * st.curl_phase)) + (side_y - hl) * ax**6
    else:
        hl = -0.62 - 0.06 * st.hair_length
        if a["Receding_Hairline"]:
            hl = -0.84
        hairline = hl + 0.05 * np.exp(-(((x - part) / 0.2) ** 2)) + (side_y - hl) * ax**3.5
        if a["Receding_Hairline"]:
            hairline -= 0.22 * np.exp(-(((np.abs(x) - 0.52 * W) / 0.17) ** 2))
    inner = np.stack([x, hairline], axis=1)
    face.poly(np.concatenate([outer, inner]), face.hair)
    strand = shade(face.hair, 0.72 if a["Gray_Hair"] or a["Blond_Hair"] else 1.35, 150)
    for k in range(5 if a["Wavy_Hair"] or st.hair_volume > 0.3 else 0):
        x0 = part + (k - 2) * 0.22 * W
        ys = np.linspace(-face.Htop - v * 0.8, (hairline.min() if a["Bangs"] else hl) - 0.04, 8)
        wob = 0.06 * np.sin(ys * 12 + k) if a["Wavy_Hair"] else 0.0
        xs = x0 + (x0 - part) * 0.3 * (ys + face.Htop) + wob
        face.poly(stroke(np.stack([xs, ys], axis=1), 0.025), strand)
    if face.long_hair and st.locks < 0.6:
        length = min(face.hair_len, 1.35)
        ys = np.linspace(-0.3, length, 12)
        wave = 0.05 * np.sin(10 * ys + 6 * st.curl_phase) if a["Wavy_Hair"] else np.zeros_like(ys)
        for sgn in (-1, 1):
            outer_x = sgn * (W + v * 0.8) + wave
            inner_x = sgn * (W - 0.13 + 0.05 * np.clip(ys, 0, None)) + wave
            pts = np.concatenate([np.stack([outer_x, ys], axis=1), np.stack([inner_x, ys], axis=1)[::-1]])
            face.poly(pts, face.hair)


def sideburns(face: Face) -> None:
    if not face.a["Sideburns"] or face.a["Bald"]:
        return
    for sgn in (-1, 1):
        x0 = sgn * (face.W - 0.01)
        x1 = sgn * (face.W - 0.17)
        pts = np.array([[x0, -0.45], [x0, 0.45], [x1 + sgn * 0.04, 0.5], [x1, -0.45]])
        face.poly(pts, face.facial_hair)


def beard(face: Face) -> None:
    a, hair = face.a, face.facial_hair
    beard = not a["No_Beard"] and not a["Goatee"]
    y = np.linspace(0.0, face.Hbot, 14)
    if beard or a["5_o_Clock_Shadow"]:
        grow = 0.07 if beard else 0.0
        outer = np.stack([face.jaw_x(y) + grow, y + grow * (y / face.Hbot) ** 4], axis=1)
        ix = np.array([face.W - 0.04, 0.66 * face.W, 0.42, 0.3])
        iy = np.array([0.14, 0.4, 0.5, 0.62])
        inner = np.stack([ix, iy], axis=1)
        mirror = np.array([-1.0, 1.0])
        region = np.concatenate([outer, (outer * mirror)[::-1], inner * mirror, inner[::-1]])
        face.poly(region, hair if beard else shade(hair, 0.5, 95))
    if a["Goatee"]:
        gx = np.linspace(-0.24, 0.24, 11)
        top = np.stack([gx, face.mouth_y + 0.1 + 0.03 * (gx / 0.24) ** 2], axis=1)
        bottom = np.stack([gx * 0.8, face.Hbot + 0.06 - 0.3 * (gx / 0.24) ** 2], axis=1)
        face.poly(np.concatenate([top, bottom[::-1]]), hair, 0.05)


def mustache(face: Face) -> None:
    if not face.a["Mustache"]:
        return
    w, y0 = face.mouth_w + 0.05, face.mouth_y - 0.04
    x = np.linspace(-w, w, 15)
    r = np.abs(x / w)
    smile = 0.09 if face.a["Smiling"] else 0.0
    top = np.stack([x, y0 - 0.15 + 0.06 * r**2 - 0.02 * (1 - r)], axis=1)
    bottom = np.stack([x, y0 + 0.06 * r**2 - smile * r**2 + 0.005], axis=1)
    face.poly(np.concatenate([top, bottom[::-1]]), face.facial_hair, 0.15)
