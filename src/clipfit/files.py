"""Writing files so that a crash, a kill or a full disk never leaves a half-written result behind, and
locks that a killed process cannot leave held."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .errors import ClipFitError


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a process of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_orphan_temp_files(path: Path) -> None:
    """Delete the temporary files that `atomic_write` left, for the file ``path`` or, when ``path`` is a
    folder, for every file in it, in processes that were killed mid-write (their pid, in the name, is
    gone); those of live writers stay."""
    path = Path(path)
    folder, name = (path, r"[^/]+") if path.is_dir() else (path.parent, re.escape(path.name))
    pattern = re.compile(rf"^\.{name}\.(\d+)-.*\.tmp$")
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        match = pattern.match(entry.name)
        if match and not pid_alive(int(match[1])):
            entry.unlink(missing_ok=True)


def path_from_text(text: str) -> str:
    """A file path written as text (in a split file, a CSV, a cache) as this process names files.

    Text files here are UTF-8, and so are the names on disk they refer to; Python decodes file names
    with the locale's encoding, ASCII under ``LC_ALL=C``, where "año/1.jpg" could not be opened as
    text. Encoding the text as UTF-8 and decoding it as file-name bytes (``os.fsdecode``) names the
    same file in every locale; in a UTF-8 locale it returns ``text`` unchanged.
    """
    return os.fsdecode(text.encode("utf-8", "surrogateescape"))


def text_from_path(name: str | os.PathLike) -> str:
    """A file or folder name (or path) as text, its bytes read as UTF-8 whatever the locale: the inverse
    of ``path_from_text``. Bytes that are not UTF-8 stay as Python's surrogate escapes, so two names
    never become one."""
    return os.fsencode(name).decode("utf-8", "surrogateescape")


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of the file's bytes, as hex, read 1 MiB at a time (a checkpoint can be gigabytes).
    A missing file raises `FileNotFoundError`."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename: a crash never leaves half a file.

    The file gets the mode a plain ``open`` would give it (0666 less the umask), not `mkstemp`'s 0600,
    so colleagues sharing a runs folder can read results. Temporary files of killed writers are removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphan_temp_files(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


class Lock:
    """An exclusive lock held by one process at a time: `fcntl.flock` on the file ``path``.

    The kernel drops the lock when its holder exits, however it exits (kill -9 included), so a killed run
    never leaves it held. The file names the holder (pid, host, command, start time) so that a refused
    process can say who holds it. Use as a context manager; `acquire` raises `ClipFitError` naming the
    holder when another process holds the lock and ``wait`` is False, else waits for it. ``what`` names
    the thing locked in that message ("seed folder runs/x/seed1").
    """

    def __init__(self, path: Path, what: str, wait: bool = False):
        self.path, self.what, self.wait = Path(path), what, wait
        self._fd: int | None = None

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            return f"pid {info['pid']} on {info['host']} since {info['since']} ({' '.join(info['command'])})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def acquire(self) -> Lock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise ClipFitError(f"{self.what} is being written by {self.holder()}; "
                               f"wait for it to finish or use another --out") from None
        self._fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": [Path(sys.argv[0]).name, *sys.argv[1:]]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
