"""`genface evaluate real=DIR fake=DIR|CKPT`: FID/KID of two image folders or of a checkpoint's samples."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from genface.config import CONF_PATH
from genface.metrics.evaluate import evaluate_folders, evaluate_generator
from genface.metrics.extractors import build_extractor

log = logging.getLogger("genface.evaluate")


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="evaluate")
def main(cfg: DictConfig) -> dict:
    if not cfg.get("real") or not cfg.get("fake"):
        raise ValueError("genface evaluate needs real=DIR (image folder) and fake=DIR or fake=CKPT (a .ckpt)")
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    extractor = build_extractor(cfg.extractor, path=cfg.extractor_path).to(device)
    common = dict(
        n_real=cfg.n_real,
        batch_size=cfg.batch_size,
        kid_subset_size=cfg.kid_subset_size,
        allow_low_n=cfg.allow_low_n,
        cache_dir=f"{cfg.paths.cache_dir}/fid",
    )
    fake = Path(cfg.fake)
    if fake.is_file() and fake.suffix == ".ckpt":
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


if __name__ == "__main__":
    main()
