"""Files written so that a crash, a full disk or a second process never leaves a wrong state:

- atomic writes: temp file in the same directory, fsync, rename. A crash mid-write leaves the previous
  file intact, never a truncated one; the temp file carries its writer's pid, and the next write of
  the same file removes the temp files of writers that are gone (a kill -9 cannot clean up after itself);
- weight files (safetensors) carry a SHA-256 of their tensors in the header metadata, checked at load
  (`check_tensor_digest`; COARSE2FINE_SKIP_CHECKSUM=1 skips the check);
- an exclusive lock per output directory (`lock_dir`), held for as long as one process writes it.
"""
from __future__ import annotations

import codecs
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Mapping

import torch

from coarse2fine.config import ConfigError, UserError

# ---- atomic writes ---------------------------------------------------------------------------------

# .<name>.<pid>.<random>.tmp (this version's writers) and .<name>.<random>.tmp (earlier ones, no pid)
def _temp_pattern(name: str | None) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(name) if name else '.+?'}\.(?:(?P<pid>\d+)\.)?[A-Za-z0-9_]+\.tmp$")


LEGACY_TMP_AGE_S = 3600  # a pid-less temp file older than this has no live writer


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temp_files(directory: str | Path, name: str | None = None) -> list[Path]:
    """Remove the temp files (and staging folders) an interrupted write left in `directory` (of the
    file `name` only, when given): those whose writer's pid is gone, and pid-less ones older than an
    hour. Returns what was removed."""
    d = Path(directory)
    if not d.is_dir():
        return []
    removed = []
    pattern, rx = (f".{name}.*.tmp" if name else ".*.tmp"), _temp_pattern(name)
    for f in d.glob(pattern):
        m = rx.match(f.name)
        if not m:
            continue
        pid = m.group("pid")
        try:
            stale = (not _alive(int(pid))) if pid else time.time() - f.stat().st_mtime > LEGACY_TMP_AGE_S
            if stale and int(pid or 0) != os.getpid():
                shutil.rmtree(f) if f.is_dir() and not f.is_symlink() else f.unlink()
                removed.append(f)
        except FileNotFoundError:  # removed meanwhile by another cleaner
            continue
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` whole or not at all. A failure (e.g. a full disk) raises an OSError that
    names `path`, and leaves the previous file, if any, as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path.parent, path.name)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename in (None, tmp):  # name the user's file, not our temp name
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


# ---- weight files: safetensors with a digest of their tensors ------------------------------------------

DIGEST_KEY = "coarse2fine_sha256"
SKIP_CHECKSUM_ENV = "COARSE2FINE_SKIP_CHECKSUM"


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor (sorted by name): its name, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach()
        h.update(f"{k}|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(memoryview(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path,
                            metadata: dict[str, str] | None = None) -> None:
    """safetensors file with the tensors' digest in its metadata (DIGEST_KEY), written atomically."""
    from safetensors.torch import save

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {**(metadata or {}), DIGEST_KEY: tensor_digest(flat)}
    atomic_write_bytes(path, save(flat, metadata=meta))


def checksum_skipped() -> bool:
    """$COARSE2FINE_SKIP_CHECKSUM as a yes/no. A value that is neither is refused: "off" or "disable" read
    as "set" skipped the check they were meant to keep, and a damaged file then loaded without a word."""
    raw = os.environ.get(SKIP_CHECKSUM_ENV, "")
    value = raw.strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise UserError(f"{SKIP_CHECKSUM_ENV}={raw!r} is neither yes nor no; set it to 1 to skip the weight files' "
                    "checksum, or unset it (0) to check them")


def check_tensor_digest(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None,
                        fix: str) -> None:
    """Raise ValueError (one line, with `fix`) when the tensors read from `path` do not hash to the
    digest written at save time. Files without one (older versions, other tools) are not checked,
    nor is any file when $COARSE2FINE_SKIP_CHECKSUM is set."""
    want = (metadata or {}).get(DIGEST_KEY)
    if not want or checksum_skipped():
        return
    if tensor_digest(tensors) != want:
        raise ValueError(f"{path} is damaged: its tensors do not match the checksum written when it was saved "
                         f"(a bad copy, disk or transfer); {fix}")


LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def text_in_place_of(path: str | Path) -> str | None:
    """What a weights file that failed to load is when it is text, else None: a Git LFS pointer (a repository
    cloned without Git LFS never fetched the file it stands for: the reader's "corrupt" or "a plain pickle"
    sent users re-exporting) or another text file, such as the page a failed download saved."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return None
    if head.startswith(LFS_POINTER):
        return (f"{path} is a Git LFS pointer ({os.path.getsize(path)} bytes), not the file it stands for: its "
                "repository was cloned without Git LFS; run `git lfs pull` there, or download the file itself")
    try:  # a character cut at byte 512 is not an error
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return None
    if not text.strip() or not all(c.isprintable() or c in "\r\n\t" for c in text):
        return None
    return (f"{path} is a text file (it begins {text.strip()[:40]!r}), not a weights file (a download that saved "
            "an error page?); download or copy it again")


# ---- errors of the file system, in one line ------------------------------------------------------------

_OS_FIXES = {
    errno.ENOSPC: "free some space or write to another --out",
    errno.EDQUOT: "free some space or write to another --out",
    errno.EACCES: "check the permissions or choose another path",
    errno.EPERM: "check the permissions or choose another path",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.EEXIST: "choose another path",
    errno.ENOTDIR: "a path component is a file, not a directory",
    errno.EISDIR: "give a file path, not a directory",
}


def describe_os_error(e: OSError) -> str:
    """One line: what failed, on which path, and the usual fix."""
    what = e.strerror or str(e)
    where = f": {e.filename}" if e.filename else ""
    fix = _OS_FIXES.get(e.errno)
    return f"{what}{where}" + (f"; {fix}" if fix else "")


# ---- one writer per directory ----------------------------------------------------------------------------

LOCK_FILE = ".lock"


class DirLock:
    """An exclusive lock on a directory: `<dir>/.lock`, held with fcntl.flock for as long as the
    writer runs (the OS drops it when the process dies, so a crash never leaves a stale lock). The
    file holds the holder's pid, for the error message of the process that is refused.

    A command that fails into a folder it created removes that folder again (`clean_failed`: the names
    of files worth keeping, such as a checkpoint to resume from; None never removes), so a failure
    leaves nothing behind that a rerun or another command would stumble on."""

    def __init__(self, directory: str | Path, holder: str = "another training process",
                 clean_failed: tuple[str, ...] | None = None):
        directory = Path(directory)
        self.path = directory / LOCK_FILE
        self.created = _first_missing(directory)  # the top folder this lock makes, None if it exists
        self.clean_failed = clean_failed
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise UserError(f"{self.path.parent} is in use by {holder} (pid {pid}); wait for it to finish or "
                            "stop it, or choose another --out") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "DirLock":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.release()
        if exc_type is not None and self.created is not None and self.clean_failed is not None:
            if not any((self.path.parent / name).exists() for name in self.clean_failed):
                shutil.rmtree(self.created, ignore_errors=True)


def _first_missing(directory: Path) -> Path | None:
    """The topmost folder of `directory`'s path that does not exist yet (what mkdir(parents=True) makes)."""
    top = None
    for d in (directory, *directory.parents):
        if d.exists():
            return top
        top = d
    return top


def lock_dir(directory: str | Path, holder: str, enabled: bool = True, clean_failed: tuple[str, ...] | None = None):
    """DirLock(directory) in the process that writes it (rank 0), a no-op context elsewhere."""
    return DirLock(directory, holder, clean_failed) if enabled else nullcontext()


def dump_json(obj: dict[str, Any], path: str | Path) -> None:
    """`obj` as indented, key-sorted JSON at `path`, written atomically."""
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def load_json(path: str | Path) -> dict[str, Any]:
    """The JSON object at `path`; a missing, damaged or non-object file is a one-line ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"missing {p}; is this a coarse2fine run directory?")
    try:
        obj = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p} is not valid JSON ({e}); re-create it or restore it from a backup") from e
    if not isinstance(obj, dict):  # every file coarse2fine writes holds one JSON object
        raise ConfigError(f"{p} holds a JSON {type(obj).__name__}, not an object of settings; re-create it or "
                          "restore it from a backup")
    return obj


def lock_holder(directory: str | Path) -> str | None:
    """The pid of a live process holding `directory`'s lock (a run being trained, an output being
    written), or None when nobody holds it. Takes nothing: the lock is tried and let go at once."""
    p = Path(directory) / LOCK_FILE
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:  # no lock file: never locked, or not ours to read
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(fd)
    return None
