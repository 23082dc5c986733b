"""synthfaces: procedural cartoon faces with ground-truth CelebA attributes, written as a CelebA folder.

Why: genface needs face data that is there without a download, trains recognisable faces on a CPU in
minutes, and carries *true* attribute labels, so that the attribute classifier, latent directions and
edits can be checked against the truth instead of against another model.

The package, in the order a face is made:

- :mod:`.attributes`: which CelebA attributes are drawn (``ATTRIBUTES``) and how they are sampled with
  CelebA-like correlations (``sample_attributes``); the seven others are always -1 in the attribute file.
- :mod:`.renderer`: ``render_face(attrs, rng, resolution)``, drawing on a :mod:`.canvas` the parts of
  :mod:`.features`, :mod:`.hair` and :mod:`.wear`; ``VERSION`` changes whenever the pixels do.
- :mod:`.writer`: ``generate_synthfaces(root)``, a torchvision CelebA folder (PNG images, attribute and
  partition files, ``synthfaces.json``), byte-identical whatever the number of worker processes.
- :mod:`.datamodule`: ``SynthFacesDataModule``, which renders on first use and reads the folder as CelebA.
"""

from genface.data.synthfaces.attributes import (
    ATTRIBUTES,
    HAIR_COLOURS,
    NOT_RENDERED,
    check_attributes,
    face_rng,
    sample_attributes,
)
from genface.data.synthfaces.datamodule import SynthFacesDataModule
from genface.data.synthfaces.renderer import VERSION, render_face
from genface.data.synthfaces.writer import LOCK_FILE, META_FILE, generate_synthfaces, is_complete

__all__ = [
    "ATTRIBUTES",
    "HAIR_COLOURS",
    "LOCK_FILE",
    "META_FILE",
    "NOT_RENDERED",
    "VERSION",
    "SynthFacesDataModule",
    "check_attributes",
    "face_rng",
    "generate_synthfaces",
    "is_complete",
    "render_face",
    "sample_attributes",
]
