"""`artstyle-download` against a local HTTP server on 127.0.0.1 serving generated images for a sample of the
REAL Flickr Style CSV's URLs (base URL rewritten): 404s, a response slower than the timeout, a truncated
body, an HTML error page with status 200, a corrupt image, Flickr's "photo unavailable" redirect; a kill -9
mid-download and a resume. Nothing outside the machine is contacted."""

from __future__ import annotations

import csv
import gzip
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_real_metadata import AVA_LISTS, FLICKR_CSV, FLICKR_NAMES, REAL

from artstyle.data import load_style_dataset
from artstyle.data.download import (
    PART_SUFFIX,
    DownloadItem,
    download_images,
    flickr_items,
    main,
    rewrite_url,
    select_items,
)

needs_real = pytest.mark.skipif(
    not (AVA_LISTS.is_dir() and FLICKR_CSV.is_file()),
    reason=f"real metadata folder absent ({REAL}); this test reads the published lists themselves",
)

REPO = Path(__file__).resolve().parents[2]
FAST = dict(timeout=0.5, retries=1, backoff=0.01, workers=4, progress=False)


def _jpeg(seed: int, size: int = 32) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


class LocalServer:
    """``routes``: URL path -> (kind, body). Kinds: image, corrupt (image/jpeg, not decodable), html (200),
    slow (headers after ``slow_seconds``), truncated (Content-Length of the full body, half of it sent),
    drip (first request: the body in small chunks, slowly; later requests: at once), unavailable (302 to
    Flickr's placeholder path). Unknown paths: 404. ``hits`` counts the requests per path."""

    def __init__(self, routes: dict[str, tuple[str, bytes]], slow_seconds: float = 1.5, delay: float = 0.0,
                 drip_chunk: int = 256, drip_seconds: float = 0.15):
        self.routes, self.hits, self.lock = routes, {}, threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with server.lock:
                    n = server.hits[self.path] = server.hits.get(self.path, 0) + 1
                kind, body = server.routes.get(self.path, ("missing", b""))
                try:
                    server.respond(self, kind, body, n)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.slow_seconds, self.delay = slow_seconds, delay
        self.drip_chunk, self.drip_seconds = drip_chunk, drip_seconds
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def respond(self, handler, kind, body, n):
        if kind == "missing":
            handler.send_error(404)
            return
        if kind == "unavailable":
            handler.send_response(302)
            handler.send_header("Location", "/images/photo_unavailable.png")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if kind == "slow":
            time.sleep(self.slow_seconds)
        if self.delay and kind == "image":
            time.sleep(self.delay)
        handler.send_response(200)
        handler.send_header("Content-Type", "text/html; charset=utf-8" if kind == "html" else "image/jpeg")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if kind == "truncated":
            handler.wfile.write(body[: len(body) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            return
        if kind == "drip" and n == 1:
            for start in range(0, len(body), self.drip_chunk):
                handler.wfile.write(body[start:start + self.drip_chunk])
                handler.wfile.flush()
                time.sleep(self.drip_seconds)
            return
        handler.wfile.write(body)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _real_rows() -> tuple[list[str], list[list[str]]]:
    """The rows of the real CSV; where the shared folder is absent (CI), 400 rows in its exact format."""
    if FLICKR_CSV.is_file():
        reader = csv.reader(io.StringIO(gzip.decompress(FLICKR_CSV.read_bytes()).decode("utf-8")))
        header = next(reader)
        return header, list(reader)
    rng = np.random.default_rng(7)
    rows = []
    for k in range(400):
        photo, server = str(5000000000 + 7919 * k), str(1000 + k % 97)
        rows.append([photo, f"http://farm{1 + k % 9}.staticflickr.com/{server}/{photo}_{rng.bytes(5).hex()}.jpg",
                     f"http://www.flickr.com/photos/48664097@N02/{photo}", str(k % 20), "train" if k % 5 else "test"])
    return ["", "image_url", "page_url", "label", "_split"], rows


def _flickr_sample(tmp_path: Path, n: int, seed: int) -> tuple[Path, list[list[str]]]:
    """data_dir with a CSV holding ``n`` real rows (seeded sample, verbatim) and the real style_names.txt."""
    header, rows = _real_rows()
    picked = [rows[i] for i in sorted(np.random.default_rng(seed).choice(len(rows), n, replace=False))]
    data_dir = tmp_path / "flickr"
    data_dir.mkdir()
    with gzip.open(data_dir / "flickr_style.csv.gz", "wt", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(picked)
    if FLICKR_NAMES.is_file():
        shutil.copy(FLICKR_NAMES, data_dir)
    return data_dir, picked


def _path(row: list[str]) -> str:
    return "/" + row[1].split("://", 1)[1].split("/", 1)[1]  # the URL's path


def _name(row: list[str]) -> str:
    return row[1].rsplit("/", 1)[1]


def _read_report(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row["file"]: row for row in csv.DictReader(f)}


def _assert_intact(image_dir: Path, expected: dict[str, bytes]):
    for name, body in expected.items():
        assert (image_dir / name).read_bytes() == body, name
        with Image.open(image_dir / name) as img:
            img.load()


BAD_KINDS = ["missing", "missing", "missing", "slow", "truncated", "html", "corrupt", "unavailable"]


def test_download_reports_dead_and_invalid_urls_and_keeps_good_images(tmp_path):
    data_dir, rows = _flickr_sample(tmp_path, 20, seed=1)  # seed 1: 5 test rows in the real CSV's sample
    routes, good, bad = {}, {}, {}
    for k, row in enumerate(rows):
        kind = BAD_KINDS[k] if k < len(BAD_KINDS) else "image"
        body = _jpeg(k)
        if kind == "html":
            body = b"<html><body>Service temporarily unavailable</body></html>"
        elif kind == "corrupt":
            body = b"\xff\xd8\xff\xe0" + bytes(300)
        if kind != "missing":
            routes[_path(row)] = (kind, body)
        if kind == "image":
            good[_name(row)] = body
        else:
            bad[_name(row)] = kind
    routes["/images/photo_unavailable.png"] = ("image", _jpeg(99))
    with LocalServer(routes) as server:
        report = download_images("flickr", data_dir, base_url=server.url, **FAST)
        hits_first = dict(server.hits)
        again = download_images("flickr", data_dir, base_url=server.url, **FAST)
        hits_second = dict(server.hits)
        damaged = sorted(good)[0]
        (data_dir / "images" / damaged).write_bytes(good[damaged][:100])  # e.g. a file damaged after the fact
        unchecked = download_images("flickr", data_dir, base_url=server.url, **FAST)
        checked = download_images("flickr", data_dir, base_url=server.url, verify_existing=True, **FAST)

    image_dir = data_dir / "images"
    assert report.requested == 20 and report.downloaded == len(good) == 12 and report.already_present == 0
    _assert_intact(image_dir, good)
    assert sorted(os.listdir(image_dir)) == sorted(good)  # no bad file, no .part left
    expected_status = {"missing": "dead", "slow": "timeout", "truncated": "incomplete", "html": "invalid",
                       "corrupt": "invalid", "unavailable": "unavailable"}
    table = _read_report(data_dir / "flickr_download_report.csv")
    assert {name: row["status"] for name, row in table.items()} == {n: expected_status[k] for n, k in bad.items()}
    assert report.counts() == {"dead": 3, "timeout": 1, "incomplete": 1, "invalid": 2, "unavailable": 1}
    by_kind = {k: table[n] for n, k in bad.items()}
    assert by_kind["missing"]["detail"] == "HTTP 404" and by_kind["missing"]["attempts"] == "1"
    assert by_kind["slow"]["attempts"] == "2" and by_kind["truncated"]["attempts"] == "2"  # transient: retried
    assert "text/html" in by_kind["html"]["detail"]
    row_of = {_name(r): r for r in rows}
    for name, row in table.items():  # the report names the real id, split and original URL
        assert (row["id"], row["split"], row["url"]) == (row_of[name][0], row_of[name][4], row_of[name][1])
    # resume: complete files are not requested again, the failed ones are retried
    assert again.already_present == 12 and again.downloaded == 0 and again.num_failed == 8
    for row in rows:
        path = _path(row)
        delta = hits_second.get(path, 0) - hits_first.get(path, 0)
        assert delta == (0 if _name(row) in good else hits_first[path]), (path, delta)
    # a damaged file is trusted by default (complete files are renamed atomically) and re-fetched when verified
    assert unchecked.already_present == 12 and unchecked.downloaded == 0
    assert checked.already_present == 11 and checked.downloaded == 1
    _assert_intact(image_dir, good)
    # the builder reads what was downloaded; the failures are its missing images
    ds = load_style_dataset("flickr", data_dir=data_dir, cache_dir=tmp_path / "cache")
    assert sum(split.num_rows for split in ds.values()) == 12 and ds.num_missing_images == 8


def test_kill_mid_download_then_resume_completes_intact(tmp_path):
    data_dir, rows = _flickr_sample(tmp_path, 16, seed=1)
    bodies = {_name(r): _jpeg(100 + k, size=200 if k == 0 else 48) for k, r in enumerate(rows)}
    routes = {_path(r): ("drip" if k == 0 else "image", bodies[_name(r)]) for k, r in enumerate(rows) if k != 5}
    good = {name: body for k, (name, body) in enumerate(bodies.items()) if k != 5}  # row 5 is a 404
    image_dir = data_dir / "images"
    drip_part = image_dir / (_name(rows[0]) + PART_SUFFIX)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    with LocalServer(routes, delay=0.25, drip_chunk=4096, drip_seconds=0.15) as server:
        cmd = [sys.executable, "-m", "artstyle.data.download", "flickr", "--data_dir", str(data_dir),
               "--base_url", server.url, "--workers", "2", "--timeout", "5", "--retries", "0", "--no_progress"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 300  # the subprocess imports torch + transformers first
            while time.monotonic() < deadline and proc.poll() is None:
                complete = [p for p in image_dir.glob("*.jpg")] if image_dir.is_dir() else []
                if len(complete) >= 3 and drip_part.is_file() and drip_part.stat().st_size > 0:
                    break
                time.sleep(0.02)
            assert proc.poll() is None, f"downloader ended before the kill: {proc.stderr.read().decode()[-2000:]}"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        present = {p.name for p in image_dir.glob("*.jpg")}
        # the kill left the dripping image partial under its temporary name only, every final file complete
        assert _name(rows[0]) not in present
        assert 0 < drip_part.stat().st_size < len(bodies[_name(rows[0])])
        assert 3 <= len(present) < len(good)
        _assert_intact(image_dir, {n: good[n] for n in present})
        hits_at_kill = dict(server.hits)

        report = download_images("flickr", data_dir, base_url=server.url, **FAST)

    assert report.already_present == len(present)
    assert report.downloaded == len(good) - len(present)
    assert report.counts() == {"dead": 1}
    _assert_intact(image_dir, good)
    assert sorted(os.listdir(image_dir)) == sorted(good)  # the .part was replaced by the complete image
    for row in rows:
        if _name(row) in present:  # complete before the kill: never fetched again
            assert server.hits[_path(row)] == hits_at_kill[_path(row)] == 1


@needs_real
def test_cli_ava_with_url_template_then_builder(tmp_path, capsys):
    data_dir = tmp_path / "ava"
    shutil.copytree(AVA_LISTS, data_dir / "style_image_lists")
    test_ids = (AVA_LISTS / "test.jpgl").read_text().split()
    train_ids = (AVA_LISTS / "train.jpgl").read_text().split()
    payload = _jpeg(0)
    routes = {f"/mirror/{i}.jpg": ("image", payload) for i in test_ids + train_ids[:40]}
    with pytest.raises(SystemExit) as exc:
        main(["ava", "--data_dir", str(data_dir)])
    assert exc.value.code == 2 and "AVA style publishes image ids, not URLs" in capsys.readouterr().err
    with LocalServer(routes) as server:
        code = main(["ava", "--data_dir", str(data_dir), "--base_url", server.url + "/mirror/{id}.jpg",
                     "--splits", "test", "--limit", "5", "--timeout", "0.5", "--no_progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "5 images requested: 5 downloaded, 0 already present, 0 failed" in out
    files = sorted(p.stem for p in (data_dir / "images").iterdir())
    assert len(files) == 5 and set(files) <= set(test_ids)
    ds = load_style_dataset("ava", data_dir=data_dir, cache_dir=tmp_path / "cache")
    assert ds["test"].num_rows == 5 and "train" not in ds  # no train image downloaded: the split is left out


@needs_real
def test_select_items_on_the_real_csv():
    items = flickr_items(FLICKR_CSV.parent)
    assert len(items) == 80000 and items[0].id == "5159730964" and items[0].classes == ("Detailed",)
    assert items[0].file_name == "5159730964_124c1e63d8.jpg" and items[0].split == "train"
    picked = select_items(items, limit=40)  # one per (split, style): 20 styles x train/test
    assert len(picked) == 40
    assert sorted((it.split, it.classes[0]) for it in picked) == sorted(
        (s, c) for s in ("train", "test") for c in {it.classes[0] for it in items}
    )
    noir = select_items(items, classes=["noir", "depth_of_field"], splits=["test"])
    assert len(noir) == 1600 and {it.classes[0] for it in noir} == {"Noir", "Depth of Field"}
    with pytest.raises(ValueError, match="unknown style"):
        select_items(items, classes=["Cubism"])
    with pytest.raises(ValueError, match="unknown split"):
        select_items(items, splits=["validation"])
    with pytest.raises(ValueError, match="limit must be >= 1"):
        select_items(items, limit=0)


def test_rewrite_url():
    item = DownloadItem(id="5159730964", url="http://farm2.staticflickr.com/1227/5159730964_124c1e63d8.jpg",
                        file_name="5159730964_124c1e63d8.jpg", split="train", classes=("Detailed",))
    assert rewrite_url(item, None) == item.url
    assert rewrite_url(item, "http://127.0.0.1:8000/") == "http://127.0.0.1:8000/1227/5159730964_124c1e63d8.jpg"
    assert rewrite_url(item, "https://m.example/{id}/{name}") == (
        "https://m.example/5159730964/5159730964_124c1e63d8.jpg"
    )
    assert rewrite_url(item, "https://m.example/x/{path}") == "https://m.example/x/1227/5159730964_124c1e63d8.jpg"
    with pytest.raises(ValueError, match="only {id}, {name} and {path}"):
        rewrite_url(item, "https://m.example/{label}.jpg")
    ava = DownloadItem(id="615561", url="", file_name="615561.jpg", split="test")
    with pytest.raises(ValueError, match="no URL in the metadata"):
        rewrite_url(ava, None)
