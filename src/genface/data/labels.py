"""Labels as indices: class labels as the class indices a net embeds, and names as the columns they name.

Items carry class labels as long (N,) and attributes as 0/1 float (N, A) (:mod:`genface.data.datasets`);
models that embed classes, callbacks that pick a classifier's columns and readers that order a file's
columns all turn one into the other here, so they agree on what a label means.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def class_index(labels: Tensor, num_classes: int, context: str = "") -> Tensor:
    """Class indices (N,) long from class labels (N,), or from one binary attribute (N, 1) when
    ``num_classes`` is 2 (``data.attributes: [Smiling]`` makes a two-class condition).

    ``context`` starts the error message, saying what needs class indices. Labels outside
    ``[0, num_classes)`` are an error, as an embedding would fail on them with a far less clear one.
    """
    if labels.is_floating_point():
        if labels.ndim == 2 and labels.shape[1] == 1 and num_classes == 2:
            return labels[:, 0].round().long()
        raise ValueError(
            f"{context}labels must be class indices (N,) in [0, {num_classes}), or one binary attribute (N, 1) "
            f"with num_classes=2; got float {tuple(labels.shape)} with num_classes={num_classes}"
        )
    labels = labels.reshape(-1).long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"class labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    return labels


def missing_names(names: Sequence[str], wanted: Sequence[str]) -> list[str]:
    """The names of ``wanted`` that ``names`` lacks, in ``wanted``'s order."""
    known = set(names)
    return [name for name in wanted if name not in known]


def name_indices(names: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """Where each name of ``wanted`` stands in ``names`` (a column, a class index); one lookup a name.

    Callers check :func:`missing_names` first where the names come from a user, to say where to fix them;
    a name still missing here is a ``ValueError`` listing the missing ones.
    """
    position: dict[str, int] = {}
    for i, name in enumerate(names):
        position.setdefault(name, i)  # the first of repeated names, as list.index
    lacking = [name for name in wanted if name not in position]
    if lacking:
        raise ValueError(f"{lacking} are not among the names {list(names)}")
    return [position[name] for name in wanted]
