"""DataModule for synthfaces, the procedural face set that genface renders itself (no download)."""

from __future__ import annotations

from typing import Any

from genface.data.celeba import CelebADataModule
from genface.data.ids import make_dataset_id, path_key


class SynthFacesDataModule(CelebADataModule):
    """Synthfaces in CelebA layout under ``root``, rendered on first use at ``resolution``.

    Rendering happens in :meth:`prepare_data` (rank 0 under a Trainer) or on the first
    ``split_dataset`` call without a Trainer; an already complete folder is reused.

    The renderer's names (``ATTRIBUTES``, ``VERSION``, ``is_complete``, ``generate_synthfaces``) are looked
    up in :mod:`genface.data.synthfaces` when they are needed, so that a stand-in renderer put in its place
    (the tests' fake, which writes a tiny folder at once) is the one used.

    Args:
        root: folder the faces are written to (and read from).
        n: number of faces; with ``seed`` and ``resolution`` it fixes the pixels.
        attributes: attribute targets; None means the attributes the renderer actually draws (the
            attribute file carries all 40 CelebA names, most constant).
        **kwargs: the common arguments of :class:`~genface.data.base.ImageDataModule`.
    """

    def __init__(
        self,
        root: str,
        n: int = 10000,
        resolution: int = 64,
        seed: int = 0,
        attributes: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        from genface.data.synthfaces import ATTRIBUTES, VERSION

        if attributes is None:
            attributes = list(ATTRIBUTES)
        super().__init__(
            root=root, resolution=resolution, crop=None, attributes=attributes, seed=seed, **kwargs
        )
        self.n = int(n)
        self.dataset_id = make_dataset_id(
            "synthfaces",
            self.resolution,
            self.channels,
            f"n{self.n}",
            f"seed{self.seed}",
            f"v{VERSION}",  # a renderer change must not read arrays prepared from older pixels
            key=path_key(self.root),
        )

    def prepare_data(self) -> None:
        """Render the faces unless ``root`` already holds them (same ``n``, ``resolution``, ``seed``)."""
        from genface.data.synthfaces import generate_synthfaces, is_complete

        if not is_complete(self.root, self.n, self.resolution, self.seed):
            generate_synthfaces(self.root, n=self.n, resolution=self.resolution, seed=self.seed)
            self._partitions = None
