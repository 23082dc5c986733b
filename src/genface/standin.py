"""`genface standin LAYOUT out=DIR [n=N] [seed=S] [size=PX]`: synthfaces in a real dataset's layout.

The writers live in :mod:`genface.data.layouts`; this entry point turns argv into their arguments.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from genface.config import CONF_PATH
from genface.data.layouts import LAYOUTS, write_standin
from genface.launch import positional_task

log = logging.getLogger("genface.standin")


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="standin")
def _app(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "layout"):
        raise ValueError(f"no layout given: genface standin LAYOUT out=DIR; layouts: {', '.join(LAYOUTS)}")
    if OmegaConf.is_missing(cfg, "out"):
        raise ValueError(
            f"out=DIR is missing: the new or empty folder to write the {cfg.layout} stand-in into"
        )
    out = write_standin(
        cfg.layout,
        cfg.out,
        n=cfg.n,
        seed=cfg.seed,
        size=cfg.size,
        attribute=cfg.attribute,
        workers=cfg.workers,
        overwrite=cfg.overwrite,
    )
    log.info("wrote a %s stand-in to %s", cfg.layout, out)
    log.info("read it with: %s", LAYOUTS[cfg.layout].use.format(out=out))


def main() -> None:
    """`genface standin celeba out=DIR` is `layout=celeba out=DIR`. Any bare first word is taken as the layout, so
    that a misspelt one is reported by write_standin with the layouts there are."""
    sys.argv = positional_task(sys.argv, "layout")
    _app()


if __name__ == "__main__":
    main()
