"""`genface sample ckpt=PATH n=N [out=DIR] [classifier=PATH] [overwrite=true | resume=true]`: samples of a
trained generator to disk."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from genface.analysis.sampling import file_identity, sample_to_disk
from genface.config import CONF_PATH
from genface.models import load_generative
from genface.models.classifier import load_classifier

log = logging.getLogger("genface.sample")


def sample(cfg: DictConfig) -> dict:
    """Load the checkpoint(s) named by `cfg` and write the samples folder; returns its manifest."""
    if not cfg.get("ckpt"):
        raise ValueError("genface sample needs ckpt=PATH (a checkpoint written by genface train)")
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_generative(cfg.ckpt, map_location=device)
    classifier = load_classifier(cfg.classifier, map_location=device) if cfg.get("classifier") else None
    out = Path(cfg.out)
    meta = sample_to_disk(
        model,
        out,
        n=cfg.n,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        progress=cfg.progress,
        classifier=classifier,
        save_features=bool(classifier is not None and cfg.features),
        provenance={
            "checkpoint": file_identity(cfg.ckpt),
            "classifier": file_identity(cfg.classifier) if classifier is not None else None,
        },
        overwrite=cfg.overwrite,
        resume=cfg.resume,
    )
    extra = ", attributes.npy, attribute_names.json" if classifier is not None else ""
    log.info("wrote %d samples of %s to %s (images/, latents.npy%s, grid.png)", meta["n"], meta["model"], out, extra)
    if "images_per_s" in meta:
        log.info(
            "%.2f images/s, %.4f s per image (the model alone: %.4f s per image) on %s",
            meta["images_per_s"], meta["seconds_per_image"], meta["generate_seconds_per_image"], device,
        )  # fmt: skip
    return meta


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="sample")
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()
