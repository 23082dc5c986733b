"""`genface evaluate real=DIR fake=DIR|CKPT`: FID/KID of two image folders or of a checkpoint's samples."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from genface.analysis.sampling import check_complete
from genface.config import CONF_PATH
from genface.metrics.extractors import FeatureExtractor, build_extractor
from genface.metrics.fidkid import FIDKID
from genface.metrics.scoring import ImageFolderDataset, evaluate_folders, evaluate_generator
from genface.metrics.stats import check_real_n

log = logging.getLogger("genface.evaluate")


def check_n(cfg: DictConfig, extractor: FeatureExtractor, fake_is_checkpoint: bool) -> None:
    """Refuse N before any image is embedded or generated (that takes minutes), not after: n_real against the
    real folder, and both sides against the low-N rule of :meth:`FIDKID.check_n`."""
    real = ImageFolderDataset(cfg.real)
    n_real = len(real) if cfg.n_real is None else int(cfg.n_real)
    check_real_n(n_real, len(real), f"the real folder {real.root}")
    if fake_is_checkpoint:
        n_fake = int(cfg.n_fake)
    else:
        check_complete(cfg.fake)
        available = len(ImageFolderDataset(cfg.fake))
        n_fake = available if cfg.n_fake is None else min(int(cfg.n_fake), available)
    rule = FIDKID(extractor, allow_low_n=cfg.allow_low_n)
    rule.check_n("real", n_real)
    rule.check_n("fake", n_fake)


def evaluate(cfg: DictConfig) -> dict:
    """Score `cfg.fake` (folder or checkpoint) against the real folder; writes and returns the results."""
    if not cfg.get("real") or not cfg.get("fake"):
        raise ValueError("genface evaluate needs real=DIR (image folder) and fake=DIR or fake=CKPT (a .ckpt)")
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    extractor = build_extractor(cfg.extractor, path=cfg.extractor_path, trusted=cfg.extractor_trusted).to(device)
    fake = Path(cfg.fake)
    is_checkpoint = fake.is_file() and fake.suffix == ".ckpt"
    check_n(cfg, extractor, is_checkpoint)
    common = dict(
        n_real=cfg.n_real,
        batch_size=cfg.batch_size,
        kid_subset_size=cfg.kid_subset_size,
        allow_low_n=cfg.allow_low_n,
        cache_dir=f"{cfg.paths.cache_dir}/fid",
    )
    if is_checkpoint:
        from genface.models import load_generative

        model = load_generative(fake, map_location=device)
        results = evaluate_generator(model, cfg.real, extractor, n_fake=cfg.n_fake, seed=cfg.seed, **common)
    else:
        results = evaluate_folders(cfg.real, str(fake), extractor, n_fake=cfg.n_fake, **common)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    log.info("wrote %s", out)
    return results


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="evaluate")
def main(cfg: DictConfig) -> dict:
    return evaluate(cfg)


if __name__ == "__main__":
    main()
