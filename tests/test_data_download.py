"""CIFAR through torchvision's real download code, served from a local HTTP server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import pickle
import shutil
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torchvision

from datamodules import DataError, ImageDataModule
from datamodules import sources

CIFAR10 = torchvision.datasets.CIFAR10
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_BATCH, TEST_SIZE = 4, 6


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _dump(path: Path, obj) -> None:
    # str keys: the real files are Python 2 pickles, which torchvision reads with
    # encoding="latin1" and so sees as str keys ("data", "labels", "label_names").
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A tiny CIFAR-10-format archive: the rows, labels, file md5s and the archive's md5."""
    root = tmp_path_factory.mktemp("cifar_src")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows, labels, train_list = [], [], []
    for b in range(1, 6):
        data = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, size=PER_BATCH).tolist()
        _dump(folder / f"data_batch_{b}", {"batch_label": f"training batch {b} of 5", "labels": y, "data": data})
        rows.append(data)
        labels += y
        train_list.append([f"data_batch_{b}", _md5(folder / f"data_batch_{b}")])
    test_rows = rng.integers(0, 256, size=(TEST_SIZE, 3072), dtype=np.uint8)
    # One image with constant colour planes, to pin down the channel order of the conversion.
    test_rows[0, :1024], test_rows[0, 1024:2048], test_rows[0, 2048:] = 10, 20, 30
    test_labels = rng.integers(0, 10, size=TEST_SIZE).tolist()
    _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": test_labels, "data": test_rows})
    _dump(folder / "batches.meta", {"num_cases_per_batch": PER_BATCH, "label_names": LABEL_NAMES, "num_vis": 3072})

    serve = root / "serve"
    serve.mkdir()
    tgz = serve / "cifar-10-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return dict(
        tgz=tgz,
        train_rows=np.concatenate(rows), train_labels=np.array(labels),
        test_rows=test_rows, test_labels=np.array(test_labels),
        tgz_md5=_md5(tgz), train_list=train_list,
        test_list=[["test_batch", _md5(folder / "test_batch")]],
        meta_md5=_md5(folder / "batches.meta"),
    )


class _Quiet(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        _Quiet.requests.append(self.path)
        super().do_GET()


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # torchvision's redirect probe closes its connection without reading the body,
        # so the server sees a broken pipe; that is expected, not worth a traceback.
        pass


@pytest.fixture
def server(archive):
    handler = functools.partial(_Quiet, directory=str(archive["tgz"].parent))
    httpd = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    _Quiet.requests.clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture
def patched(monkeypatch, archive):
    """Point torchvision's CIFAR10 at the tiny archive; returns a function setting the url."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(CIFAR10, "tgz_md5", archive["tgz_md5"])
    monkeypatch.setattr(CIFAR10, "train_list", archive["train_list"])
    monkeypatch.setattr(CIFAR10, "test_list", archive["test_list"])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": archive["meta_md5"]})
    return lambda url: monkeypatch.setattr(CIFAR10, "url", url)


def _nhwc(rows):
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on exit: nothing listens there


def test_download_verify_and_load(tmp_path, archive, server, patched):
    patched(f"{server}/cifar-10-python.tar.gz")
    data_dir = tmp_path / "data"
    dm = ImageDataModule("cifar10", data_dir=str(data_dir), batch_size=4, val_size=4)
    assert not data_dir.exists()  # __init__ never touches the disk
    dm.prepare_data()
    fetched = _Quiet.requests.count("/cifar-10-python.tar.gz")
    assert fetched >= 1  # torchvision probes for redirects, then downloads
    assert (data_dir / "cifar-10-python.tar.gz").is_file()
    dm.setup()

    n = 5 * PER_BATCH
    assert dm.classes == tuple(LABEL_NAMES) and dm.num_classes == 10 and dm.hflip is True
    assert (dm.num_train, len(dm.val_images), len(dm.test_images)) == (n - 4, 4, TEST_SIZE)
    expected = _nhwc(archive["train_rows"])
    np.testing.assert_array_equal(dm.train_images, expected[dm.train_indices])
    np.testing.assert_array_equal(dm.val_images, expected[dm.val_indices])
    np.testing.assert_array_equal(dm.train_labels, archive["train_labels"][dm.train_indices])
    np.testing.assert_array_equal(dm.test_images, _nhwc(archive["test_rows"]))
    np.testing.assert_array_equal(dm.test_labels, archive["test_labels"])
    assert dm.test_images.flags.c_contiguous and dm.test_images.dtype == np.uint8
    # Row layout is 1024 red, 1024 green, 1024 blue values, each row-major.
    assert np.all(dm.test_images[0] == [10, 20, 30])
    row = archive["train_rows"][0]
    src = sources.load("cifar10", data_dir)
    y, x = 5, 17
    assert tuple(src.train_images[0, y, x]) == (row[y * 32 + x], row[1024 + y * 32 + x], row[2048 + y * 32 + x])

    # Already there: a second prepare_data must not download again.
    dm.prepare_data()
    assert _Quiet.requests.count("/cifar-10-python.tar.gz") == fetched

    batch_x, batch_y, _ = next(iter(dm.train_dataloader()))
    assert tuple(batch_x.shape) == (4, 3, 32, 32)


def test_wrong_md5_is_a_data_error(tmp_path, server, patched, monkeypatch):
    patched(f"{server}/cifar-10-python.tar.gz")
    monkeypatch.setattr(CIFAR10, "tgz_md5", "0" * 32)
    dm = ImageDataModule("cifar10", data_dir=str(tmp_path), batch_size=4, val_size=4)
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert "md5" in msg and "\n" not in msg and "--data-dir" in msg and "--dataset digits" in msg
    assert _Quiet.requests  # it did reach the server: the failure is the checksum, not the network


def test_no_network_is_a_one_line_data_error(tmp_path, patched):
    patched(f"http://127.0.0.1:{_free_port()}/cifar-10-python.tar.gz")
    dm = ImageDataModule("cifar10", data_dir=str(tmp_path / "empty"), batch_size=4)
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert "\n" not in msg
    assert "could not be downloaded" in msg and "--data-dir" in msg and "--dataset digits" in msg
    assert "cifar-10-python.tar.gz" in msg and "cifar-10-batches-py" in msg

    # Without a download, setup() on an empty folder says the same kind of thing.
    dm = ImageDataModule("cifar10", data_dir=str(tmp_path / "empty"), download=False)
    dm.prepare_data()  # download=False: a no-op, even with no network
    with pytest.raises(DataError) as err:
        dm.setup()
    msg = str(err.value)
    assert "\n" not in msg and "--data-dir" in msg and "--dataset digits" in msg


def test_a_data_dir_that_cannot_be_written_is_not_called_a_network_failure(tmp_path, patched):
    patched(f"http://127.0.0.1:{_free_port()}/cifar-10-python.tar.gz")
    (tmp_path / "data").write_text("a file where --data-dir's folder should be")
    dm = ImageDataModule("cifar10", data_dir=str(tmp_path / "data"), batch_size=4)
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert "\n" not in msg and "could not be downloaded" not in msg
    assert msg.startswith(f"cannot write {tmp_path / 'data'}") and "--data-dir" in msg


def test_user_supplied_archive_needs_no_network(tmp_path, archive, patched):
    patched(f"http://127.0.0.1:{_free_port()}/cifar-10-python.tar.gz")  # would fail if used
    shutil.copy(archive["tgz"], tmp_path / "cifar-10-python.tar.gz")
    dm = ImageDataModule("cifar10", data_dir=str(tmp_path), batch_size=4, val_size=4, download=False)
    dm.setup()  # extracts the archive it finds, offline
    np.testing.assert_array_equal(dm.test_images, _nhwc(archive["test_rows"]))
    ImageDataModule("cifar10", data_dir=str(tmp_path), batch_size=4, val_size=4).prepare_data()  # verified, no fetch


def test_corrupted_extracted_file_is_a_data_error(tmp_path, archive, server, patched):
    patched(f"{server}/cifar-10-python.tar.gz")
    sources.prepare("cifar10", tmp_path)
    (tmp_path / "cifar-10-python.tar.gz").unlink()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"truncated")
    with pytest.raises(DataError, match="missing or corrupted") as err:
        sources.load("cifar10", tmp_path)
    assert "--dataset digits" in str(err.value)


def test_cifar100_missing_names_its_own_files(tmp_path):
    with pytest.raises(DataError) as err:
        sources.load("cifar100", tmp_path)
    assert "CIFAR-100" in str(err.value) and "cifar-100-python" in str(err.value)


def test_default_cifar_val_size_too_big_for_tiny_archive(tmp_path, archive, server, patched):
    patched(f"{server}/cifar-10-python.tar.gz")
    dm = ImageDataModule("cifar10", data_dir=str(tmp_path), batch_size=4)  # default val 5000 > 20 images
    dm.prepare_data()
    with pytest.raises(DataError, match="validation split of"):
        dm.setup()
