"""Checkpoint files that are whole or absent: written beside their target, synced, renamed into place.

Lightning's default writer builds the file in $TMPDIR and renames it over the target; where $TMPDIR is on
another filesystem the rename fails and the target is truncated and copied into in place, without fsync,
so a kill or a full disk during that copy leaves a 0-byte or corrupt `last.ckpt`, temp files pile up in
$TMPDIR and the checkpoint keeps the temp file's 0600 mode. `AtomicCheckpointIO` (the trainer's `plugins`)
never touches the target until the new file is complete and on disk, and refuses non-finite weights.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.cloud_io import _is_local_file_protocol
from lightning_fabric.utilities.types import _PATH

#: errnos of a full disk or an exhausted quota (no EDQUOT on Windows).
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
#: Directory fsync is refused by some filesystems (some network and FUSE mounts); the file itself was synced.
_DIR_FSYNC_UNSUPPORTED = (errno.EINVAL, errno.ENOTSUP, errno.EBADF)


class NonFiniteCheckpointError(ValueError):
    """The weights to be saved hold NaN or inf: writing them would replace a usable checkpoint with a broken one."""


def non_finite_tensors(state_dict: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of `state_dict` that hold NaN or inf."""
    floats = [(name, t) for name, t in state_dict.items() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not floats:
        return []
    device = floats[0][1].device  # the flags are gathered there: one device sync, not one per tensor
    finite = torch.stack([torch.isfinite(t.detach()).all().to(device) for _, t in floats]).cpu()
    if bool(finite.all()):
        return []
    return [name for (name, _), ok in zip(floats, finite.tolist()) if not ok]


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask sets it, racing other threads)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{socket.gethostname()}."


def _remove_orphans(target: Path) -> None:
    """Delete temp files of `target` left by killed processes of this host (`.NAME.HOST.PID.XXXX.tmp`).
    Not on Windows, where os.kill(pid, 0) would send Ctrl-C instead of probing the process."""
    if os.name == "nt":
        return
    prefix = _temp_prefix(target)
    for orphan in target.parent.glob(f"{prefix}*.tmp"):
        pid = orphan.name[len(prefix) :].split(".", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            orphan.unlink(missing_ok=True)
        except PermissionError:  # alive, someone else's
            continue


def _os_errno(err: BaseException) -> int | None:
    """The errno of `err` or of the OSError it wraps (torch.save turns a failed write into a RuntimeError)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen.errno
        seen = seen.__cause__ or seen.__context__
    return None


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable: without it a power cut can bring back the old directory entry. (Windows can
    neither open nor sync a directory, and has no O_DIRECTORY.)"""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: _PATH) -> None:
    """`torch.save(obj, path)` that leaves `path` either untouched or complete.

    The bytes go to a temp file in `path`'s own directory (a rename within one filesystem is atomic), which is
    flushed and fsynced, given the mode a plain `open` would give (0666 less the umask), and renamed over
    `path`; the directory is then fsynced. On any failure (a full disk, a kill signal turned into an exception)
    the temp file is removed and the previous `path` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f"{_temp_prefix(target)}{os.getpid()}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        code = _os_errno(err)
        if code in _DISK_FULL:
            raise OSError(
                code,
                f"no space left to write checkpoint {target} ({os.strerror(code)}); the previous file is kept "
                "unchanged. Free space on that filesystem (or point paths.log_dir elsewhere) and resume",
            ) from err
        err.add_note(f"while writing checkpoint {target}: not written, the previous file is kept unchanged")
        raise
    _fsync_directory(target.parent)
    _remove_orphans(target)


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose local saves are atomic and durable (see `atomic_torch_save`) and that refuses to
    write a checkpoint whose `state_dict` holds NaN or inf. Remote URLs (s3://, gs://...) keep Lightning's writer,
    whose object stores replace whole objects anyway.

    Wire it with the trainer's `plugins: [{_target_: genface.checkpoint_io.AtomicCheckpointIO}]`.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options, got {storage_options!r}")
        bad = non_finite_tensors(checkpoint.get("state_dict") or {})
        if bad:
            raise NonFiniteCheckpointError(
                f"refusing to write checkpoint {path}: non-finite values in {', '.join(bad[:5])}"
                f"{f' and {len(bad) - 5} more tensors' if len(bad) > 5 else ''}; the previous file is kept. "
                "The run has diverged: resume from an earlier checkpoint with lower learning rates"
            )
        if not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, path)
