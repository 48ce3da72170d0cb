"""CIFAR-10 and CIFAR-100: torchvision's download with checksum verification, or a copy already
under --data-dir, read into memory as uint8 NHWC arrays."""

from __future__ import annotations

import http.client
import os
import tarfile
import urllib.error
from pathlib import Path

import torchvision

from .errors import DataError, one_line
from .source import Source, make_source

# Class names, not class objects: looked up on torchvision.datasets at call time, so whatever
# torchvision (or a test that patches its url/md5 attributes) says is what gets used.
_CIFAR = {"cifar10": ("CIFAR10", "CIFAR-10"), "cifar100": ("CIFAR100", "CIFAR-100")}
CIFAR_NAMES = tuple(_CIFAR)

# What a failed download raises: no route / refused / DNS / timeout (URLError and the socket
# errors under it), a broken HTTP exchange, redirect loops. Only these are "could not be downloaded".
_NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException,
                   RecursionError)
# What a downloaded archive that is not CIFAR raises: torchvision's "File not found or corrupted."
# after an md5 mismatch (RuntimeError), and a truncated or non-gzip archive.
_ARCHIVE_ERRORS = (RuntimeError, tarfile.TarError, EOFError)


def _cifar_class(name: str):
    return getattr(torchvision.datasets, _CIFAR[name][0])


def _what_to_do(name: str) -> str:
    cls = _cifar_class(name)
    return (
        f"put {cls.filename} or {cls.base_folder}/ under --data-dir, "
        f"or run offline with --dataset digits"
    )


def _archive_is_valid(cls, root: Path) -> bool:
    from torchvision.datasets.utils import check_integrity

    return check_integrity(os.fspath(root / cls.filename), cls.tgz_md5)


def _extracted_is_valid(cls, root: Path) -> bool:
    # The same per-file md5 check torchvision runs before loading, without loading anything.
    from torchvision.datasets.utils import check_integrity

    return all(
        check_integrity(os.fspath(root / cls.base_folder / f), md5) for f, md5 in cls.train_list + cls.test_list
    )


def download(name: str, data_dir: str | os.PathLike) -> None:
    """Download CIFAR `name` into `data_dir` if it is not there yet; torchvision verifies the
    archive's md5 and every extracted file's md5."""
    cls = _cifar_class(name)
    root = Path(data_dir).expanduser()
    try:
        # train=False: the smaller split is enough to trigger download + full integrity check.
        cls(root=os.fspath(root), train=False, download=True)
    except _NETWORK_ERRORS as e:
        raise DataError(
            f"{_CIFAR[name][1]} is not in {root} and could not be downloaded ({one_line(e)}); {_what_to_do(name)}"
        ) from e
    except _ARCHIVE_ERRORS as e:
        archive = root / cls.filename
        if archive.is_file() and not _archive_is_valid(cls, root):
            reason = f"{archive} failed its md5 check: a partial download or a different file"
        else:
            reason = f"the downloaded archive is damaged: {one_line(e)}"
        raise DataError(f"{_CIFAR[name][1]} could not be prepared in {root} ({reason}); {_what_to_do(name)}") from e
    except OSError as e:  # not the network: writing the archive or its files under --data-dir
        raise DataError(f"cannot write {e.filename or root} while downloading {_CIFAR[name][1]} "
                        f"({e.strerror or one_line(e)}); give --data-dir a writable folder with room, "
                        f"or {_what_to_do(name)}") from e


def load_cifar(name: str, data_dir: str | os.PathLike) -> Source:
    cls = _cifar_class(name)
    root = Path(data_dir).expanduser()
    # Hashing only happens when an archive is lying there, so the common case pays nothing extra.
    archive = root / cls.filename
    if archive.is_file() and not _extracted_is_valid(cls, root) and _archive_is_valid(cls, root):
        # A user-supplied archive counts as "already here": extracting it needs no network.
        from torchvision.datasets.utils import extract_archive

        try:
            extract_archive(os.fspath(archive), os.fspath(root))
        except (OSError, tarfile.TarError, EOFError) as e:
            raise DataError(
                f"{archive} could not be extracted ({one_line(e)}); {_what_to_do(name)}"
            ) from e
    try:
        train = cls(root=os.fspath(root), train=True, download=False)
        test = cls(root=os.fspath(root), train=False, download=False)
    except (RuntimeError, OSError, EOFError) as e:
        # torchvision's own message suggests download=True, which means nothing to a CLI user.
        folder = root / cls.base_folder
        if not folder.is_dir():
            reason = f"no {cls.base_folder}/ and no valid {cls.filename} there"
        elif not _extracted_is_valid(cls, root):
            reason = f"a file in {folder} is missing or fails its md5 check"
        else:
            reason = one_line(e)
        raise DataError(f"{_CIFAR[name][1]} is missing or corrupted in {root} ({reason}); {_what_to_do(name)}") from e
    # torchvision already turned the (N, 3072) rows into (N, 32, 32, 3); make_source makes it contiguous.
    return make_source(train.data, train.targets, test.data, test.targets, train.classes, hflip=True)
