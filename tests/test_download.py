"""data.download=true against a local HTTP server on 127.0.0.1 that serves tiny official-layout archives."""

from __future__ import annotations

import hashlib
import shutil
import threading
import urllib.request
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fakes import make_isic2018

from lesion.data import build_datamodule
from lesion.data.download import ISIC2018_FILES, DownloadError, fetch

DATA_CONFIG = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}


class Server:
    """Serves files from a dict with HEAD, GET, byte ranges (416 past the end, or for every range when refuse_ranges)
    and S3-style MD5 ETags; records every request."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests, self.etags, self.refuse_ranges = files, [], {}, False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _head(self, body: bytes, status: int, length: int):
                self.send_response(status)
                self.send_header("Content-Length", str(length))
                self.send_header("ETag", f'"{outer.etags.get(self.path, hashlib.md5(body).hexdigest())}"')
                self.end_headers()

            def do_HEAD(self):
                outer.requests.append(("HEAD", self.path, None))
                body = outer.files.get(self.path.lstrip("/"))
                if body is None:
                    return self.send_error(404)
                self._head(body, 200, len(body))

            def do_GET(self):
                rng = self.headers.get("Range")
                outer.requests.append(("GET", self.path, rng))
                body = outer.files.get(self.path.lstrip("/"))
                if body is None:
                    return self.send_error(404)
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if rng and (start >= len(body) or outer.refuse_ranges):  # as S3 answers a range past the end
                    return self.send_error(416)
                self._head(body, 206 if rng else 200, len(body) - start)
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def official_archives(tmp_path: Path) -> dict[str, bytes]:
    """The seven official files, zipped from a tiny official-layout dataset."""
    source = make_isic2018(tmp_path / "source", official=("Validation", "Test"))
    files = {}
    for name in ISIC2018_FILES:
        if name.endswith(".csv"):
            files[name] = (source / name).read_bytes()
            continue
        archive = tmp_path / "archives" / name
        archive.parent.mkdir(exist_ok=True)
        with zipfile.ZipFile(archive, "w") as zf:
            for path in sorted((source / Path(name).stem).rglob("*")):
                zf.write(path, path.relative_to(source))
        files[name] = archive.read_bytes()
    return files


@pytest.fixture
def server(tmp_path):
    server = Server(official_archives(tmp_path))
    yield server
    server.close()


def test_download_true_fetches_and_unpacks_the_official_layout(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LESION_ISIC2018_URL", server.url)
    root = tmp_path / "isic2018"
    dm = build_datamodule({"name": "isic2018", "root": str(root), "download": True}, DATA_CONFIG)
    dm.setup()
    assert (root / "ISIC2018_Task3_Training_Input" / "ISIC_0000000.jpg").is_file()
    assert len(dm.frames["train"]) == 84 and len(dm.frames["val"]) == 14 and len(dm.frames["test"]) == 14
    fetched = {path for method, path, _ in server.requests if method == "GET"}
    assert fetched == {f"/{name}" for name in ISIC2018_FILES}
    server.requests.clear()
    build_datamodule({"name": "isic2018", "root": str(root), "download": True}, DATA_CONFIG).setup()
    assert not [r for r in server.requests if r[0] == "GET"]  # verified files are not fetched again


def test_partial_file_resumes_with_a_range_request(server, tmp_path):
    name = "ISIC2018_Task3_Training_Input.zip"
    body = server.files[name]
    dest = tmp_path / name
    dest.with_name(name + ".part").write_bytes(body[:1000])
    fetch(server.url + name, dest)
    assert dest.read_bytes() == body
    assert ("GET", f"/{name}", "bytes=1000-") in server.requests


def test_every_http_response_is_closed(server, tmp_path, monkeypatch):
    opened = []
    urlopen = urllib.request.urlopen

    def recording(*args, **kwargs):
        opened.append(urlopen(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(urllib.request, "urlopen", recording)
    name = "ISIC2018_Task3_Training_Input.zip"
    dest = tmp_path / name
    dest.with_name(name + ".part").write_bytes(server.files[name][:1000])
    fetch(server.url + name, dest)  # HEAD, then a ranged GET
    fetch(server.url + name, dest)  # HEAD only: the file is there and verifies
    assert len(opened) == 3 and all(response.closed for response in opened)


def test_a_complete_partial_file_is_verified_without_a_range_request(server, tmp_path):
    # Killed between the last byte and the rename: `Range: bytes=<size>-` would get S3's 416 on every later run.
    name = "ISIC2018_Task3_Training_Input.zip"
    dest = tmp_path / name
    dest.with_name(name + ".part").write_bytes(server.files[name])
    fetch(server.url + name, dest)
    assert dest.read_bytes() == server.files[name] and not dest.with_name(name + ".part").exists()
    assert not [r for r in server.requests if r[0] == "GET"]


def test_a_refused_range_fetches_the_file_again(server, tmp_path):
    name = "ISIC2018_Task3_Training_Input.zip"
    dest = tmp_path / name
    dest.with_name(name + ".part").write_bytes(server.files[name][:1000])
    server.refuse_ranges = True
    fetch(server.url + name, dest)
    assert dest.read_bytes() == server.files[name]
    assert [r[2] for r in server.requests if r[0] == "GET"] == ["bytes=1000-", None]


def test_an_interrupted_extraction_is_redone(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LESION_ISIC2018_URL", server.url)
    root = tmp_path / "isic2018"
    extract, calls = zipfile.ZipFile._extract_member, []

    def dies_midway(self, member, *args):
        calls.append(member)
        if len(calls) == 5:
            raise KeyboardInterrupt  # Ctrl-C, or the job's time limit, in the middle of the images
        return extract(self, member, *args)

    monkeypatch.setattr(zipfile.ZipFile, "_extract_member", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        build_datamodule({"name": "isic2018", "root": str(root), "download": True}, DATA_CONFIG).setup()
    monkeypatch.setattr(zipfile.ZipFile, "_extract_member", extract)
    assert not (root / "ISIC2018_Task3_Training_Input").exists()  # nothing half-done where the layout goes
    dm = build_datamodule({"name": "isic2018", "root": str(root), "download": True}, DATA_CONFIG)
    dm.setup()
    assert len(dm.frames["train"]) + len(dm.frames["val"]) + len(dm.frames["test"]) == 112
    assert not list(root.glob(".extracting-*"))


def test_checksum_mismatch_is_an_error_and_drops_the_partial(server, tmp_path):
    name = "ISIC2018_Task3_Training_GroundTruth.zip"
    server.etags[f"/{name}"] = "0" * 32
    with pytest.raises(DownloadError, match="MD5 .* does not match"):
        fetch(server.url + name, tmp_path / name)
    assert not (tmp_path / (name + ".part")).exists() and not (tmp_path / name).exists()


def test_unreachable_source_names_the_url(tmp_path):
    with pytest.raises(DownloadError, match="127.0.0.1:9/nothing.zip"):
        fetch("http://127.0.0.1:9/nothing.zip", tmp_path / "nothing.zip", timeout=5)


def test_existing_layout_skips_unpacking(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LESION_ISIC2018_URL", server.url)
    root = tmp_path / "isic2018"
    shutil.copytree(tmp_path / "source", root)
    marker = root / "ISIC2018_Task3_Training_Input" / "kept.txt"
    marker.write_text("untouched")
    build_datamodule({"name": "isic2018", "root": str(root), "download": True}, DATA_CONFIG).setup()
    assert marker.read_text() == "untouched"
