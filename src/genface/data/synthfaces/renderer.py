"""Renders one synthfaces face: a cartoon face with given CelebA attributes, as uint8 pixels.

Each attribute is drawn so that a small CNN can see it at 64 px: 5_o_Clock_Shadow (stubble on the jaw),
Arched_Eyebrows, Bald (no hair, shiny scalp), Bangs (fringe over the forehead, above the brows), Big_Lips,
Big_Nose, the four hair colours, Blurry (Gaussian blur), Bushy_Eyebrows, Chubby (wider, rounder face),
Eyeglasses (frames, bridge and arms; some tinted), Goatee (chin beard), Heavy_Makeup (eye shadow, eyeliner,
blush), Male (square jaw, wide neck, thick brows, mostly short hair), Mouth_Slightly_Open, Mustache,
Narrow_Eyes, No_Beard (False means a full beard or a goatee), Pale_Skin, Receding_Hairline, Rosy_Cheeks,
Sideburns, Smiling (curved mouth; open smiles show teeth), Wavy_Hair, Wearing_Earrings, Wearing_Hat (beanie,
brimmed hat or cap), Wearing_Lipstick, Wearing_Necklace, Wearing_Necktie, Young (older faces have wrinkles).
One rendering-only coupling: faces with brown or red hair are never very dark-skinned, so that hair and
beards stay distinguishable from skin.

The parts are drawn by :mod:`.features`, :mod:`.hair` and :mod:`.wear` on a :class:`~.canvas.Face`, in the
order of ``LAYERS`` (back to front).
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
from PIL import Image, ImageFilter

from genface.data.synthfaces import features, hair, wear
from genface.data.synthfaces.attributes import check_attributes
from genface.data.synthfaces.canvas import Face

#: The renderer's version: in ``synthfaces.json`` and in the DataModule's array-cache id, so that a dataset
#: or prepared arrays of other pixels are regenerated, never reused. Raise it whenever the pixels change.
VERSION = 3

#: The nuisance factors of a face (pose, proportions, colours, lighting ...), each one uniform draw from the
#: face's generator, in this order.
STYLE_FIELDS = (
    "dx", "dy", "scale", "angle", "yaw", "width", "jaw", "chin", "skin", "hair_shade", "hair_volume",
    "hair_length", "long_hair", "part", "curl_phase", "locks", "eye_colour", "eye_size", "eye_gap",
    "gaze", "lip_colour", "lipstick", "shadow_colour", "hat_type", "hat_hue", "hat_value",
    "glasses_dark", "frame_colour", "frame_shape", "clothes_hue", "clothes_value", "shirt",
    "tie_colour", "neckline", "earring", "metal", "bg_hue1", "bg_hue2", "bg_sat", "bg_val1",
    "bg_val2", "bg_dir", "light_dir", "light_k", "blur", "facial_grey", "mouth_w", "brow_h",
)  # fmt: skip

#: The parts of a picture, back to front.
LAYERS: tuple[Callable[[Face], None], ...] = (
    wear.background, wear.clothes, hair.back_hair, features.neck, wear.neckwear, features.ears,
    features.head, features.wrinkles, features.cheeks, features.eyes, features.brows, features.nose,
    hair.beard, features.mouth, hair.mustache, hair.front_hair, hair.sideburns, wear.hat, wear.glasses,
    wear.earrings,
)  # fmt: skip


def render_face(attrs: dict[str, bool], rng: np.random.Generator, resolution: int = 64) -> np.ndarray:
    """Render one face with the given attributes as a uint8 (resolution, resolution, 3) array.

    Missing attributes are False (No_Beard defaults to True); the nuisance factors (pose, scale,
    skin, colours, background, lighting) come from ``rng``, which is consumed identically whatever
    ``attrs`` says, so toggling one attribute with the same seed changes only that attribute.
    """
    if resolution < 8:
        raise ValueError(f"resolution must be >= 8 pixels, got {resolution}")
    full = check_attributes(attrs)
    st = SimpleNamespace(**dict(zip(STYLE_FIELDS, rng.random(len(STYLE_FIELDS)).tolist())))
    canvas = 4 * resolution
    face = Face(full, st, canvas)
    for layer in LAYERS:
        layer(face)
    # reducing_gap: a 2x box reduction before LANCZOS halves the cost and is visually identical.
    img = face.img.resize((resolution, resolution), Image.Resampling.LANCZOS, reducing_gap=2.0)
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
