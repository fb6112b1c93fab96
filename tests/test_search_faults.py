"""The style index survives faults (issue 15, item 3), tested by injecting them.

- a crash at every file operation of a run (in process), and ``kill -9`` of an indexing process (a
  subprocess, killed once its progress is on disk): the index left behind loads without a warning,
  and the next run finishes it, re-embedding nothing that was saved, with no duplicate;
- garbage / truncated / missing / inconsistent files: a warning naming the file and a rebuild;
- two processes indexing the same folder: the second waits for the first's lock;
- many images killed at random (seeded) points: every rerun finishes with all entries.

Reference for every check: a fresh index of the same folder built in this process by `update_index`.
The model is a randomly initialised 2-block ViT at 16 px; images are generated 8 x 8 px PNGs.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_search import CountingEmbedder

import artstyle.search as search
from artstyle import ArtStyleModel, build_image_processor
from artstyle.search import (
    INDEX_JSON,
    StyleEmbedder,
    StyleIndex,
    build_index,
    index_lock,
    load_index,
    update_index,
)

from conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]
POLL_TIMEOUT_S = 600  # generous: a loaded CI machine takes long to import torch in a subprocess

# Runs build_index in a fresh interpreter. argv: root index_dir model_dir batch_size save_every hang_after.
# hang_after >= 0: block forever in the forward pass after that many batches (the test kills it there).
INDEXER = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from artstyle.search import StyleEmbedder, build_index

root, index_dir, model_dir, batch_size, save_every, hang_after = sys.argv[1:]
hang_after = int(hang_after)

class Embedder(StyleEmbedder):
    batches = 0

    def embed_pixels(self, pixel_values):
        Embedder.batches += 1
        while 0 <= hang_after < Embedder.batches:
            time.sleep(1)
        return super().embed_pixels(pixel_values)

embedder = Embedder(model_dir, batch_size=int(batch_size), device="cpu")
index, report = build_index(root, embedder, index_dir, save_every=int(save_every), progress=False)
print(json.dumps({"entries": len(index), "added": report.added, "unchanged": report.unchanged}))
"""


class Crash(BaseException):
    """Stands for the process dying at this point (not an Exception: nothing catches it)."""


@pytest.fixture(autouse=True)
def _one_thread():
    # the tiny model is fastest single-threaded on a shared machine; restore for the other test files
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_style_model")
    model = ArtStyleModel(tiny_config(image_size=16, patch_size=8)).eval()
    model.save_pretrained(folder)
    build_image_processor(model.config).save_pretrained(folder)
    return folder


def make_images(root: Path, count: int, seed: int = 0, size: int = 8) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / f"part{i % 3}"  # nested folders: paths are relative with "/"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"img{i:05d}.png")
    return root


def reference(root: Path, model_dir: Path) -> dict[str, np.ndarray]:
    index, _ = update_index(root, StyleEmbedder(str(model_dir), batch_size=64, device="cpu"), progress=False)
    return dict(zip(index.paths, index.embeddings))


def assert_consistent(index: StyleIndex, expected: dict[str, np.ndarray], complete: bool = True):
    """No duplicate, every row the fresh embedding of its path; ``complete``: every image present."""
    assert len(set(index.paths)) == len(index.paths), "duplicate paths in the index"
    assert len(index.embeddings) == len(index.paths) == len(index.stats)
    assert set(index.paths) <= set(expected)
    if complete:
        assert sorted(index.paths) == sorted(expected)
    for path, vector in zip(index.paths, index.embeddings):
        np.testing.assert_allclose(vector, expected[path], atol=2e-5, err_msg=path)


def leftovers(index_dir: Path) -> list[str]:
    """Files in the index folder that its manifest does not account for."""
    meta = json.loads((index_dir / INDEX_JSON).read_text())
    allowed = {INDEX_JSON, search.INDEX_LOCK} | {spec["file"] for spec in meta["files"]}
    return sorted(path.name for path in index_dir.iterdir() if path.name not in allowed)


def start_indexer(root, index_dir, model_dir, batch_size=4, save_every=1, hang_after=-1, stderr=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    args = [sys.executable, "-c", INDEXER, str(root), str(index_dir), str(model_dir), str(batch_size),
            str(save_every), str(hang_after)]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=stderr or subprocess.PIPE, text=True)


def manifest_entries(index_dir: Path) -> int:
    """Entries in the manifest on disk now (-1: none yet). Reading races with the writer's renames,
    which are atomic, so a read sees either the old or the new manifest."""
    try:
        return len(json.loads((index_dir / INDEX_JSON).read_text())["entries"])
    except FileNotFoundError:
        return -1


def wait_for(condition, process, what: str):
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while not condition():
        if process is not None and process.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)
    return True


def kill(process):
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stdout.close()
    process.stderr.close()


# ----------------------------------------------------------------------------------------------
# the on-disk format
# ----------------------------------------------------------------------------------------------


def test_manifest_names_checksummed_files_and_nothing_else_is_left(model_dir, tmp_path):
    root = make_images(tmp_path / "works", 10)
    index_dir = tmp_path / "idx"
    embedder = CountingEmbedder(str(model_dir), batch_size=3, device="cpu")
    index, report = build_index(root, embedder, index_dir, save_every=1, progress=False)
    assert report.added == 10 and embedder.embedded == 10 and not report.rebuilt

    meta = json.loads((index_dir / INDEX_JSON).read_text())
    assert meta["format_version"] == 2 and meta["model_fingerprint"] == embedder.fingerprint
    (spec,) = meta["files"]  # the per-batch progress files were compacted into one
    assert spec["rows"] == 10 and spec["file"] == f"embeddings-{spec['sha256'][:24]}.safetensors"
    assert leftovers(index_dir) == []
    assert_consistent(StyleIndex.load(index_dir), reference(root, model_dir))

    # nothing changed: nothing embedded, nothing rewritten
    stamp = (index_dir / INDEX_JSON).stat().st_mtime_ns
    embedder.embedded = 0
    again, report = build_index(root, embedder, index_dir, progress=False)
    assert embedder.embedded == 0 and report.unchanged == 10
    assert (index_dir / INDEX_JSON).stat().st_mtime_ns == stamp
    assert again.paths == index.paths


def test_files_of_others_in_the_index_folder_are_left_alone(model_dir, tmp_path):
    root = make_images(tmp_path / "works", 3)
    index_dir = tmp_path / "idx"
    index_dir.mkdir()
    foreign = [index_dir / "embeddings_mine.safetensors", index_dir / "notes.txt", index_dir / ".tmp-keep"]
    for path in foreign:
        path.write_bytes(b"not ours")
    (index_dir / ".tmp-interrupted.part").write_bytes(b"half a file")  # what a killed writer leaves
    build_index(root, StyleEmbedder(str(model_dir), device="cpu"), index_dir, progress=False)
    assert sorted(leftovers(index_dir)) == sorted(path.name for path in foreign)
    assert all(path.read_bytes() == b"not ours" for path in foreign)


def test_default_index_dir_is_hidden_in_the_collection(model_dir, tmp_path):
    root = make_images(tmp_path / "works", 4)
    index, _ = build_index(root, StyleEmbedder(str(model_dir), device="cpu"), progress=False)
    assert (root / search.DEFAULT_INDEX_DIR / INDEX_JSON).is_file() and len(index) == 4
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        build_index(tmp_path / "missing", StyleEmbedder(str(model_dir), device="cpu"))


def test_bad_images_are_skipped_counted_and_not_retried(model_dir, tmp_path, caplog):
    root = make_images(tmp_path / "works", 9)
    (root / "broken.png").write_bytes(b"not an image")
    (root / "part1" / "empty.jpg").write_bytes(b"")
    embedder = CountingEmbedder(str(model_dir), batch_size=4, device="cpu")
    with caplog.at_level(logging.WARNING, logger="artstyle.search"):
        index, report = build_index(root, embedder, tmp_path / "idx", num_workers=2, progress=False)
    assert sorted(path for path, _ in report.failed) == ["broken.png", "part1/empty.jpg"]
    assert "Skipped 2 unreadable image(s)" in caplog.text and "broken.png" in caplog.text
    assert embedder.embedded == 9 and report.added == 9
    assert_consistent(index, reference(root, model_dir))

    embedder.embedded = 0
    _, report = build_index(root, embedder, tmp_path / "idx", num_workers=2, progress=False)
    assert embedder.embedded == 0 and len(report.failed) == 2


# ----------------------------------------------------------------------------------------------
# crashes: at every file operation (in process), and kill -9 (subprocess)
# ----------------------------------------------------------------------------------------------


def test_crash_at_every_file_operation_leaves_a_usable_index(model_dir, tmp_path, monkeypatch, caplog):
    root = make_images(tmp_path / "works", 24)
    expected = reference(root, model_dir)
    real_replace, real_unlink = os.replace, os.unlink
    calls = {"n": 0, "crash_at": None}

    def counted(real):
        def operation(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == calls["crash_at"]:
                raise Crash(f"crash before file operation {calls['n']}")
            return real(*args, **kwargs)

        return operation

    monkeypatch.setattr(os, "replace", counted(real_replace))
    monkeypatch.setattr(os, "unlink", counted(real_unlink))

    def run(index_dir):
        embedder = CountingEmbedder(str(model_dir), batch_size=4, device="cpu")
        return (*build_index(root, embedder, index_dir, save_every=2, progress=False), embedder)

    run(tmp_path / "count")
    operations = calls["n"]
    assert operations >= 8  # 3 progress saves (file + manifest) + the final save, and cleanups

    for crash_at in range(1, operations + 1):
        index_dir = tmp_path / f"crash{crash_at}"
        calls.update(n=0, crash_at=crash_at)
        with pytest.raises(Crash):
            run(index_dir)
        calls.update(crash_at=None)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="artstyle.search"):
            partial = load_index(index_dir)
        assert caplog.records == [], f"crash at operation {crash_at}: {caplog.text}"
        saved = 0
        if partial is not None:
            assert_consistent(partial, expected, complete=False)
            saved = len(partial)

        index, report, embedder = run(index_dir)
        assert embedder.embedded == 24 - saved, f"crash at operation {crash_at}: saved rows were re-embedded"
        assert not report.rebuilt
        assert_consistent(index, expected)
        assert_consistent(StyleIndex.load(index_dir), expected)
        assert leftovers(index_dir) == []


def test_kill_9_mid_indexing_then_resume(model_dir, tmp_path):
    root = make_images(tmp_path / "works", 40)
    index_dir = tmp_path / "idx"
    # batches of 4, progress saved every 2 batches; the process hangs in batch 6, after the save of batch 4
    process = start_indexer(root, index_dir, model_dir, batch_size=4, save_every=2, hang_after=5)
    try:
        reached = wait_for(lambda: manifest_entries(index_dir) >= 16, process, "the second progress save")
        assert reached, f"the indexer exited early ({process.returncode}): {process.communicate()[1][-2000:]}"
    finally:
        kill(process)
    assert process.returncode == -signal.SIGKILL
    expected = reference(root, model_dir)

    partial = StyleIndex.load(index_dir)  # loads cleanly: no warning path needed
    assert len(partial) == 16
    assert_consistent(partial, expected, complete=False)

    embedder = CountingEmbedder(str(model_dir), batch_size=4, device="cpu")
    index, report = build_index(root, embedder, index_dir, progress=False)
    assert embedder.embedded == 24 and report.added == 24 and report.unchanged == 16 and not report.rebuilt
    assert_consistent(index, expected)
    assert_consistent(StyleIndex.load(index_dir), expected)
    assert leftovers(index_dir) == []


def kill_at_random_points(root: Path, index_dir: Path, model_dir: Path, count: int, kills: int, seed: int):
    """Start the indexer ``kills`` times, each time killing it once its saved progress passes a random
    (seeded) number of entries; the poll lags, so the kill lands anywhere (embedding, writing, renaming).
    The indexer blocks before its last batch, so it is always killed, never finishes by itself."""
    rng = np.random.default_rng(seed)
    batch_size = 8
    batches = -(-count // batch_size)
    most_saved = (batches - 1) * batch_size  # saved before the blocked last batch
    for _ in range(kills):
        before = max(manifest_entries(index_dir), 0)
        if before >= most_saved:
            break
        target = int(rng.integers(before + 1, most_saved + 1))
        process = start_indexer(root, index_dir, model_dir, batch_size, save_every=1, hang_after=batches - 1)
        try:
            saved = lambda target=target: manifest_entries(index_dir) >= target  # noqa: E731
            reached = wait_for(saved, process, f"{target} saved entries")
            assert reached, f"the indexer exited ({process.returncode}): {process.communicate()[1][-2000:]}"
        finally:
            kill(process)


@pytest.mark.parametrize(
    "count, kills",
    [
        (300, 2),
        pytest.param(
            2000,
            5,
            marks=pytest.mark.skipif(
                not os.environ.get("ARTSTYLE_SLOW_TESTS"),
                reason="slow (6 interpreter starts); set ARTSTYLE_SLOW_TESTS=1 to run",
            ),
        ),
    ],
)
def test_index_killed_at_random_points_finishes_on_rerun(model_dir, tmp_path, count, kills):
    root = make_images(tmp_path / "works", count, seed=count)
    index_dir = tmp_path / "idx"
    kill_at_random_points(root, index_dir, model_dir, count, kills, seed=count)
    saved = manifest_entries(index_dir)
    assert 0 < saved < count  # each killed run had saved progress (the kill waits for it), none finished

    embedder = CountingEmbedder(str(model_dir), batch_size=64, device="cpu")
    index, report = build_index(root, embedder, index_dir, progress=False)
    assert len(index) == count and len(set(index.paths)) == count
    assert report.unchanged == saved and embedder.embedded == report.added == count - saved  # nothing twice
    assert not report.rebuilt and report.failed == []
    assert_consistent(index, reference(root, model_dir))
    assert leftovers(index_dir) == []


# ----------------------------------------------------------------------------------------------
# damaged files: warn naming the file, rebuild, never a traceback
# ----------------------------------------------------------------------------------------------


def _embeddings_file(index_dir: Path) -> Path:
    (spec,) = json.loads((index_dir / INDEX_JSON).read_text())["files"]
    return index_dir / spec["file"]


def _edit_manifest(index_dir: Path, edit) -> Path:
    path = index_dir / INDEX_JSON
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    return path


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


DAMAGE = {
    "garbage embeddings": lambda d: (_embeddings_file(d).write_bytes(os.urandom(64)), _embeddings_file(d))[1],
    "truncated embeddings": lambda d: _truncate(_embeddings_file(d)),
    "missing embeddings": lambda d: (_embeddings_file(d).unlink(), _embeddings_file(d))[1],
    "garbage manifest": lambda d: ((d / INDEX_JSON).write_bytes(b"\x00\xff garbage"), d / INDEX_JSON)[1],
    "truncated manifest": lambda d: _truncate(d / INDEX_JSON),
    "manifest row count": lambda d: _edit_manifest(d, lambda m: m["files"][0].update(rows=m["files"][0]["rows"] + 1)),
    "entry missing": lambda d: _edit_manifest(d, lambda m: m["entries"].pop()),
    "duplicate path": lambda d: _edit_manifest(d, lambda m: m["entries"][1].update(path=m["entries"][0]["path"])),
    "wrong fingerprint": lambda d: _edit_manifest(d, lambda m: m.update(model_fingerprint="0" * 64)),
    "future format": lambda d: _edit_manifest(d, lambda m: m.update(format_version=99)),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_index_warns_naming_the_file_and_is_rebuilt(model_dir, tmp_path, caplog, damage):
    root = make_images(tmp_path / "works", 12)
    index_dir = tmp_path / "idx"
    embedder = CountingEmbedder(str(model_dir), batch_size=5, device="cpu")
    build_index(root, embedder, index_dir, progress=False)
    damaged = DAMAGE[damage](index_dir)

    if damage != "wrong fingerprint":  # StyleIndex.load itself: one clear error naming the file
        with pytest.raises((ValueError, FileNotFoundError), match=damaged.name):
            StyleIndex.load(index_dir)

    embedder.embedded = 0
    with caplog.at_level(logging.WARNING, logger="artstyle.search"):
        index, report = build_index(root, embedder, index_dir, progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(damaged) in warnings[0], warnings
    assert "rebuilt" in warnings[0]
    assert report.rebuilt and report.added == 12 and embedder.embedded == 12
    expected = reference(root, model_dir)
    assert_consistent(index, expected)
    assert_consistent(StyleIndex.load(index_dir), expected)
    assert leftovers(index_dir) == []


def test_legacy_format_1_index_is_read(model_dir, tmp_path):
    from safetensors.numpy import save_file

    root = make_images(tmp_path / "works", 5)
    index, _ = update_index(root, StyleEmbedder(str(model_dir), device="cpu"), progress=False)
    index_dir = tmp_path / "idx"
    index_dir.mkdir()
    save_file({"embeddings": index.embeddings}, str(index_dir / "embeddings.safetensors"))
    entries = [{"path": p, "size": s, "mtime_ns": m} for p, (s, m) in zip(index.paths, index.stats)]
    meta = {"format_version": 1, "model_fingerprint": index.model_fingerprint, "root": str(index.root),
            "dim": int(index.embeddings.shape[1]), "entries": entries, "failed": {}}
    (index_dir / INDEX_JSON).write_text(json.dumps(meta))

    embedder = CountingEmbedder(str(model_dir), device="cpu")
    updated, report = build_index(root, embedder, index_dir, progress=False)
    assert embedder.embedded == 0 and report.unchanged == 5 and not report.rebuilt
    assert not (index_dir / "embeddings.safetensors").exists()  # rewritten in format 2
    assert json.loads((index_dir / INDEX_JSON).read_text())["format_version"] == 2
    assert_consistent(updated, reference(root, model_dir))


# ----------------------------------------------------------------------------------------------
# concurrency: the lock
# ----------------------------------------------------------------------------------------------


def test_two_indexers_at_once_wait_for_each_other(model_dir, tmp_path):
    root = make_images(tmp_path / "works", 30)
    index_dir = tmp_path / "idx"
    index_dir.mkdir()
    logs = [tmp_path / "a.err", tmp_path / "b.err"]
    processes = []
    # hold the lock until both indexers are waiting for it, so that they really run at the same time
    with index_lock(index_dir):
        try:
            for log in logs:
                with open(log, "w") as stderr:
                    processes.append(start_indexer(root, index_dir, model_dir, batch_size=4, stderr=stderr))
            for process, log in zip(processes, logs):
                waiting = wait_for(lambda log=log: "Waiting for another process" in log.read_text(), process,
                                   "the indexer to wait for the lock")
                assert waiting, log.read_text()[-2000:]
        except BaseException:
            for process in processes:
                process.kill()
            raise
    results = []
    for process, log in zip(processes, logs):
        out, _ = process.communicate(timeout=POLL_TIMEOUT_S)
        assert process.returncode == 0, log.read_text()[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    # one did the work; the other got the lock afterwards and found everything indexed
    assert sorted((r["added"], r["unchanged"]) for r in results) == [(0, 30), (30, 0)]
    assert all(r["entries"] == 30 for r in results)
    assert_consistent(StyleIndex.load(index_dir), reference(root, model_dir))
    assert leftovers(index_dir) == []


def test_lock_timeout_is_a_clear_error(model_dir, tmp_path):
    root = make_images(tmp_path / "works", 2)
    index_dir = tmp_path / "idx"
    index_dir.mkdir()
    other = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, filelock; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); "
         "print('locked', flush=True); time.sleep(600)", str(index_dir / search.INDEX_LOCK)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert other.stdout.readline().strip() == "locked"
        with pytest.raises(TimeoutError, match=r"index\.lock was held by another process for more than 0\.2 s"):
            build_index(root, StyleEmbedder(str(model_dir), device="cpu"), index_dir, lock_timeout=0.2)
    finally:
        other.kill()
        other.wait()
        other.stdout.close()
