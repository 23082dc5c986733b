"""The attributes of a synthfaces face: which CelebA attributes are drawn, and how they are drawn at random.

Correlations follow CelebA's direction (Mustache, beards, sideburns and stubble only on men; Bald mostly
men and older; lipstick and make-up only on women; Gray_Hair mostly when not Young), with rare attributes
made more frequent than in CelebA (each rendered attribute is present in roughly 8-60 % of faces;
No_Beard, a negation, in about 82 %) so that 10k images are enough to learn them.
"""

from __future__ import annotations

import numpy as np

from genface.data.celeba import CELEBA_ATTRIBUTES

#: CelebA attributes synthfaces does not draw: always -1 in its attribute file (do not train or evaluate on them).
NOT_RENDERED = frozenset(
    {"Attractive", "Bags_Under_Eyes", "Double_Chin", "High_Cheekbones", "Oval_Face", "Pointy_Nose",
     "Straight_Hair"}
)  # fmt: skip
#: The attributes synthfaces draws, in CelebA's column order.
ATTRIBUTES: tuple[str, ...] = tuple(a for a in CELEBA_ATTRIBUTES if a not in NOT_RENDERED)
#: Mutually exclusive; all four are False for bald heads and for red/auburn hair (which has no CelebA label).
HAIR_COLOURS: tuple[str, ...] = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")


def face_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of face ``index``: its attributes, then its nuisance factors, are drawn from it.

    One independent stream per image, so images do not depend on how work is split across workers.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


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


def check_attributes(attrs: dict[str, bool]) -> dict[str, bool]:
    """Complete ``attrs`` (missing: False, No_Beard: True); refuse names that cannot be honoured, so typos fail."""
    unknown = sorted(set(attrs) - set(CELEBA_ATTRIBUTES))
    if unknown:
        raise ValueError(f"unknown attribute name(s) {unknown}; expected CelebA names: {list(ATTRIBUTES)}")
    unrendered = sorted(a for a in attrs if a in NOT_RENDERED and attrs[a])
    if unrendered:
        raise ValueError(f"synthfaces does not render {unrendered}; rendered attributes: {list(ATTRIBUTES)}")
    full = {a: bool(attrs.get(a, a == "No_Beard")) for a in ATTRIBUTES}
    colours = [c for c in HAIR_COLOURS if full[c]]
    if len(colours) > 1:
        raise ValueError(f"hair colours are exclusive, got {colours}")
    return full
