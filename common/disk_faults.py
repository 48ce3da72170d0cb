"""A full, read-only or vanished disk under --logdir: one line that names the path and what to do,
and an exit code of its own, on both sides.

Such errors surface as an OSError from Python (Lightning's folders and checkpoints, TensorBoard's
event files, hparams.yaml), or as a TensorStore/Orbax error whose text carries the system's message
(Orbax's checkpoint writer), so both are recognised here.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import threading
from pathlib import Path

_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file grew past the size this process may write",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOENT: "the folder vanished",
    errno.ENOTDIR: "a file stands where a folder should be",
    errno.EEXIST: "a file stands where a folder should be",
    errno.EIO: "an input/output error of the device",
}
_MESSAGES = {  # the system's text as TensorStore and others pass it on
    "No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
    "File too large": errno.EFBIG, "Read-only file system": errno.EROFS,
    "Permission denied": errno.EACCES, "Not a directory": errno.ENOTDIR,
}


_BY_TYPE = {FileNotFoundError: errno.ENOENT, NotADirectoryError: errno.ENOTDIR,
            PermissionError: errno.EACCES, FileExistsError: errno.EEXIST}


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def find(err: BaseException, logdir: str | Path) -> str | None:
    """The one-line message if `err` (or an error it came from) is a disk fault, else None.

    An OSError for a missing file counts only under `logdir`: a missing dataset is bad input,
    reported elsewhere."""
    logdir = Path(logdir).absolute()
    for link in _chain(err):
        code, path = None, None
        if isinstance(link, OSError) and link.errno in _CAUSES:
            code, path = link.errno, link.filename
            if isinstance(path, bytes):  # TensorBoard's event writer names its file in bytes
                path = os.fsdecode(path)
        elif isinstance(link, OSError) and link.errno is None and type(link) in _BY_TYPE:
            # raised by a library with a message only, e.g. Orbax's NotADirectoryError(f"... {path}")
            code, path = _BY_TYPE[type(link)], _path_in(str(link), logdir)
        else:
            text = str(link)
            code, path = next((c for message, c in _MESSAGES.items() if message in text), None), _path_in(text, logdir)
        if code is None:
            continue
        if path is not None and not _under(Path(str(path)), logdir):
            if code in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST):
                continue  # a data or weights path: not the logdir's disk
        where = path if path is not None else logdir
        if code == errno.ENOENT:
            return (f"cannot write {where}: {_CAUSES[code]} during the run, and its checkpoints with "
                    f"it; nothing more is written. {_advice(code)}")
        return (f"cannot write {where}: {_CAUSES[code]}. {_advice(code)}; the run's complete "
                f"checkpoints are kept, and --resume last continues from the newest")
    return None


class RunFolder:
    """A run's version folder as it was first seen, with the files it held then (hparams.yaml,
    the TensorBoard event file). Deleted, or deleted and made again by a writer that did not know
    (Orbax's asynchronous writer, a checkpoint's makedirs), it has vanished: without this check
    TensorBoard would go on writing into its deleted file, and the next checkpoint would sit alone
    in a new folder. (A folder's inode number cannot tell: a new folder may get the old number.)"""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._files = self._current()

    def _current(self) -> set[str]:
        try:
            return {p.name for p in self.path.iterdir() if p.is_file()}
        except (FileNotFoundError, NotADirectoryError):
            return set()

    def check(self) -> None:
        """Raises the disk fault of a vanished folder (one still empty is taken as first seen)."""
        if not self._files:
            self._files = self._current()
        if not self._files or not self._files <= self._current():
            raise FileNotFoundError(errno.ENOENT, "the run folder vanished", str(self.path))


def _path_in(text: str, logdir: Path) -> str | None:
    """The first path under the logdir that an error's text names, as TensorStore quotes it."""
    named = [p for p in re.findall(r"(/[^\s'\"]+)", text) if _under(Path(p), logdir)]
    return named[0] if named else None


def _advice(code: int) -> str:
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "Free space under --logdir, or move the run folder to a disk with room"
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "Make --logdir writable, or give another --logdir"
    return "Check that --logdir is a folder that stays in place, or give another --logdir"


def _under(path: Path, root: Path) -> bool:
    try:
        path.absolute().relative_to(root)
        return True
    except ValueError:
        return False


class QuietDiskFaults(logging.Filter):
    """Drops a library's log records of a disk fault (Orbax logs each failed background write
    with its traceback): the run ends with its own one line instead."""

    def __init__(self, logdir: str | Path) -> None:
        super().__init__()
        self.logdir = logdir

    def filter(self, record: logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        if err is not None and find(err, self.logdir):
            return False
        return find(Exception(record.getMessage()), self.logdir) is None


def _closed_loop(value: BaseException | None) -> bool:
    return type(value) is RuntimeError and str(value) == "Event loop is closed"


def quiet_closed_loop(excepthook):
    """sys.excepthook without TensorStore's reports of a failed Orbax write: once one write fails
    (a full disk), Orbax closes its event loop, and TensorStore's threads, calling back into it for
    the writes still under way, report 'Event loop is closed' with a traceback for each."""
    def hook(kind, value, traceback):
        if not _closed_loop(value):
            excepthook(kind, value, traceback)

    return hook


def quiet_closed_loop_unraisable(unraisablehook):
    """The same for sys.unraisablehook, where TensorStore's C++ threads report them
    (PyErr_WriteUnraisable: a bare traceback, dozens for one full disk)."""
    def hook(unraisable):
        if not _closed_loop(unraisable.exc_value):
            unraisablehook(unraisable)

    return hook


def quiet(logdir: str | Path) -> None:
    """While a run lasts: its disk fault is told once, by train.py's one line. Libraries that
    write from threads of their own (TensorBoard's event writer, Orbax's checkpoint writer) would
    each print it again with a traceback."""
    for library in ("absl", "asyncio"):  # Orbax logs each failed write of a full disk
        logging.getLogger(library).addFilter(QuietDiskFaults(logdir))
    sys.excepthook = quiet_closed_loop(sys.excepthook)
    sys.unraisablehook = quiet_closed_loop_unraisable(sys.unraisablehook)
    previous = threading.excepthook

    def thread_hook(args) -> None:
        if args.exc_value is not None and find(args.exc_value, logdir):
            return
        previous(args)

    threading.excepthook = thread_hook
