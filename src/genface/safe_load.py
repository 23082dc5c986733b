"""Opening checkpoints and weight files that others made, without running code from them.

A `.ckpt` is a pickle, and reading a pickle can call any function the file names; a checkpoint's
hyper-parameters also name classes (`_target_`, `genface_class`) that genface builds when it loads the model.
Checkpoints are shared, so every file a user points genface at is read with torch's weights-only unpickler,
which accepts tensors and plain Python data plus the few inert types of `SAFE_GLOBALS`, and only the classes
that `resolve_target` accepts are built from it. Nothing is trusted for coming from a genface run: a file
can be edited after it was written.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pickle
import re
import zipfile
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode

#: The non-tensor types genface checkpoints hold (found by loading every family's checkpoint): the omegaconf
#: containers that Hydra-made hyper-parameters keep (e.g. a data module's `attributes` list), their metadata,
#: their untyped value node, and the types that metadata refers to (`typing.Any`, `dict`, `list`, `int`,
#: `defaultdict(dict)` of the resolver cache). None of them runs code when it is rebuilt.
SAFE_GLOBALS: list[Any] = [
    DictConfig,
    ListConfig,
    ContainerMetadata,
    Metadata,
    AnyNode,
    Any,
    defaultdict,
    dict,
    list,
    int,
]

# Registered process-wide, so that Lightning's own reads (resuming with `ckpt_path`, `load_from_checkpoint`)
# accept genface checkpoints with weights_only=True too.
torch.serialization.add_safe_globals(SAFE_GLOBALS)

#: Comma-separated modules or packages of your own whose classes and functions checkpoints may name
#: (e.g. a net written outside genface): `GENFACE_TRUSTED_MODULES=mynets,lab.models`.
TRUSTED_MODULES_ENV = "GENFACE_TRUSTED_MODULES"

_NETS, _MODELS, _OPTIM = "genface.nets", "genface.models", "torch.optim"
#: What genface builds from torch.optim: optimisers and learning-rate schedulers (ReduceLROnPlateau included).
_OPTIMISATION = (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)
_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
_RULE = (
    "genface never runs code from a checkpoint: it builds only genface's networks (genface.nets) and models "
    "(genface.models), torch.optim optimisers and schedulers, and what you list in $" + TRUSTED_MODULES_ENV
)


class UnsafeCheckpointError(ValueError):
    """A file holds what would run code when read, or names a class genface does not build from files."""


def safe_load(path: str | Path, map_location: str | torch.device | None = "cpu", mmap: bool = False) -> Any:
    """`torch.load` of `path` with weights_only=True and `SAFE_GLOBALS`: tensors and plain data, never code.

    `mmap=True` maps the tensors instead of reading them (cheap when only the metadata is wanted).
    Raises UnsafeCheckpointError naming the file and what it holds beyond the allow-list, and ValueError
    naming the file for anything torch cannot read.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}")
    try:
        # mmap needs torch's zip format; files in the legacy format are read whole.
        return torch.load(
            path, map_location=map_location, mmap=mmap and zipfile.is_zipfile(path), weights_only=True
        )
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refused to load {path}: it holds {_refused(str(err))}, and unpickling that could run code. "
            f"{_RULE}. Use checkpoints written by genface, or re-save the tensors alone (a state dict)"
        ) from None
    except Exception as err:  # truncated, foreign or corrupt files: torch raises many kinds
        raise ValueError(f"{path} is not a readable torch checkpoint ({type(err).__name__}: {err})") from err


def _refused(message: str) -> str:
    """What the weights-only unpickler refused, from its message (without torch's advice to load unsafely)."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return f"the global {found.group(1)}"
    lines = [
        line.strip() for line in message.split("WeightsUnpickler error:")[-1].splitlines() if line.strip()
    ]
    advice = ("Weights only load failed", "(1)", "(2)", "Check the documentation")
    detail = next((line for line in lines if not line.startswith(advice)), "unknown content")
    return f"content outside tensors and plain data ({detail})"


#: Modules that were renamed after checkpoints naming them were written: old import path prefix -> new one.
#: Checkpoints keep loading; the mapping is applied before anything is checked or imported.
MOVED_MODULES = {"genface.models.autoencoder.": "genface.models.vaegan."}


def current_path(target: str) -> str:
    """`target` with a renamed module's old path replaced by its new one (see `MOVED_MODULES`)."""
    for old, new in MOVED_MODULES.items():
        if target.startswith(old):
            return new + target[len(old):]
    return target


def resolve_target(target: object, key: str, source: str | Path) -> Callable[..., Any]:
    """The class or function that `target` (an import path read from `source` at `key`) names, if genface
    builds it from a checkpoint: a class or function defined in genface.nets, a class defined in
    genface.models, a torch.optim optimiser or scheduler class, or anything defined in the modules of
    $GENFACE_TRUSTED_MODULES. "Defined in" is checked on the object found, so a path through a module that
    merely imports something else (`genface.nets.resnet.torch.load`) is refused too.
    """

    def refuse(why: str) -> UnsafeCheckpointError:
        return UnsafeCheckpointError(f"{source}: {key}={target!r} is refused: {why}. {_RULE}")

    trusted = tuple(m.strip() for m in os.environ.get(TRUSTED_MODULES_ENV, "").split(",") if m.strip())
    if not isinstance(target, str) or not _IMPORT_PATH.fullmatch(target):
        raise refuse("not an import path")
    target = current_path(target)
    if not _within(target, (_NETS, _MODELS, _OPTIM, *trusted)):
        raise refuse("it is outside the classes genface builds from checkpoints")
    try:
        found = _locate(target)
    except (ImportError, AttributeError) as err:
        raise refuse(f"it cannot be imported ({err})") from err
    module = getattr(found, "__module__", None) or ""
    is_class = inspect.isclass(found)
    allowed = (is_class or inspect.isfunction(found)) and (
        _within(module, (_NETS, *trusted))
        or (is_class and _within(module, (_MODELS,)))
        or (is_class and _within(module, (_OPTIM,)) and issubclass(found, _OPTIMISATION))
    )
    if not allowed:
        what = (
            found.__name__ if inspect.ismodule(found) else f"{module}.{getattr(found, '__qualname__', '?')}"
        )
        raise refuse(f"it leads to {type(found).__name__} {what}")
    return found


def check_targets(node: Any, key: str, source: str | Path) -> None:
    """Refuse a config tree read from `source` (dicts, lists, omegaconf containers; `key` is its name) that
    would make Hydra's `instantiate` build something `resolve_target` refuses. Interpolations (`${...}`) are
    refused too: `instantiate` resolves them first, and one such as `${oc.decode:...}` can produce a new
    `_target_`; a checkpoint holds resolved values.
    """
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, Mapping):
        if "_target_" in node:
            resolve_target(node["_target_"], f"{key}._target_", source)
        for name, value in node.items():
            check_targets(value, f"{key}.{name}", source)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_targets(value, f"{key}[{i}]", source)
    elif isinstance(node, str) and "${" in node:
        raise UnsafeCheckpointError(
            f"{source}: {key}={node!r} is refused: an interpolation would be evaluated when the model is "
            f"built. {_RULE}"
        )


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


def _locate(path: str) -> Any:
    """The object at a dotted path, importing modules from the left as Hydra's `instantiate` does."""
    parts = path.split(".")
    found: Any = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=2):
        if hasattr(found, part):
            found = getattr(found, part)
        else:
            found = importlib.import_module(".".join(parts[:i]))
    return found


def checkpoint_class(path: Path) -> str:
    """The LightningModule class a genface checkpoint records (memory-mapped: the weights are not read).
    Read without running code, and refused when it names a class genface does not build from checkpoints."""
    ckpt = safe_load(path, mmap=True)
    name = ckpt.get("genface_class") if isinstance(ckpt, dict) else None
    if name:
        resolve_target(name, "genface_class", path)
        name = current_path(name)
    return str(name or "")
