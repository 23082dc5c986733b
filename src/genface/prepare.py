"""`genface prepare data=NAME`: decode and resize a dataset once into the uint8 array cache."""

from __future__ import annotations

import logging

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from genface.config import CONF_PATH

log = logging.getLogger("genface.prepare")


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="prepare")
def main(cfg: DictConfig) -> None:
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    written = datamodule.prepare_cache(progress=True)
    log.info("prepared %s: %d files; training now reads these arrays", datamodule.dataset_id, len(written))
    for path in written:
        log.info("  %s", path)


if __name__ == "__main__":
    main()
