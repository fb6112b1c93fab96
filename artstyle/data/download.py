"""Download the images of the Flickr Style and AVA style benchmarks from their published metadata.

    artstyle-download flickr --data_dir data/flickr_style             # reads data_dir/flickr_style.csv.gz
    artstyle-download ava --data_dir data/ava --base_url "https://mirror.example/ava/{id}.jpg"

    from artstyle.data.download import download_images
    report = download_images("flickr", "data/flickr_style", limit=2000, classes=["Noir", "HDR"])

Images go to ``data_dir/images/`` under the names the builders read (Flickr: the URL's basename; AVA:
``<id>.jpg``), so ``load_style_dataset("flickr" | "ava", data_dir=...)`` finds them directly.

What each dataset allows:

- **Flickr Style**: the published CSV (``flickr_style.csv.gz`` of Caffe's ``examples/finetune_flickr_style``)
  lists one static Flickr URL per image; many are dead by now (HTTP 404/410, or Flickr's "photo unavailable"
  placeholder image, recognised by its SHA-1 as Caffe's ``assemble_data.py`` did). Dead images are reported,
  never fatal.
- **AVA style**: the ``style_image_lists`` hold image *ids* only. The images are distributed by the AVA
  authors as an archive (not per-image URLs), so the downloader needs ``base_url``: a URL template with
  ``{id}`` on a mirror you have access to (e.g. ``https://host/ava/images/{id}.jpg``). Without it, download
  the official archive and put its images in ``data_dir/images/``.

Robustness: a thread pool of ``requests`` sessions (one per thread); a per-request timeout (connect and
each read); retries with exponential backoff and jitter (honouring ``Retry-After``) on timeouts, dropped
connections, truncated bodies and HTTP 429/5xx; each image is streamed to ``<name>.part`` and renamed only
when complete (Content-Length enforced) **and** decodable by PIL, so a kill at any moment leaves no
half-written image under the final name and the next run re-fetches the partial ones and skips the
complete ones. Undecodable downloads (an HTML error page served with status 200, a truncated or corrupt
file) are deleted. Every failure is written to ``<dataset>_download_report.csv`` (id, split, url, file,
status, detail, attempts).

The retry loop is our own rather than ``urllib3.Retry`` on the session adapter: ``Retry`` only covers
failures before the response headers arrive, while a body cut short (``IncompleteRead``) or a read
timeout in the middle of the body happens while streaming and must be retried the same way.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import os
import random
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from .ava import _find_lists_dir, _parse_styles, _read_lines
from .flickr import _SPLIT_COLUMNS, _URL_COLUMNS, FLICKR_STYLE_NAMES, _find_csv, _pick, _read_csv
from .images import BadImageError, open_image_rgb

logger = logging.getLogger(__name__)

DATASETS = ("flickr", "ava")
PART_SUFFIX = ".part"
# Flickr answers a deleted photo with this placeholder image (SHA-1 from Caffe's assemble_data.py).
FLICKR_MISSING_IMAGE_SHA1 = "6a92790b1c2a301c6e7ddef645dca1f53ea97ac2"
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
USER_AGENT = "artstyle-download/0.1 (research dataset download; python-requests)"
_CHUNK = 16 * 1024  # urllib3 reads a whole chunk before it returns: small enough to stream to disk

# Outcome statuses of one image.
OK, PRESENT = "ok", "present"
FAILURE_STATUSES = ("dead", "unavailable", "invalid", "timeout", "incomplete", "connection_error", "http_error")


@dataclass(frozen=True)
class DownloadItem:
    """One image to fetch: its id, URL, file name under ``images/``, split and style names."""

    id: str
    url: str
    file_name: str
    split: str
    classes: tuple[str, ...] = ()


@dataclass
class DownloadResult:
    item: DownloadItem
    status: str
    detail: str = ""
    attempts: int = 0


@dataclass
class DownloadReport:
    """Counts of one `download_images` run and its failures (also written to ``report_file``)."""

    image_dir: Path
    requested: int = 0
    downloaded: int = 0
    already_present: int = 0
    failures: list[DownloadResult] = field(default_factory=list)
    report_file: Path | None = None

    @property
    def num_failed(self) -> int:
        return len(self.failures)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for failure in self.failures:
            out[failure.status] += 1
        return dict(out)

    def summary(self) -> str:
        failed = ", ".join(f"{k} {v}" for k, v in sorted(self.counts().items())) or "none"
        return (
            f"{self.requested} images requested: {self.downloaded} downloaded, {self.already_present} already "
            f"present, {self.num_failed} failed ({failed}); images in {self.image_dir}"
            + (f"; failures listed in {self.report_file}" if self.report_file and self.failures else "")
        )


# ------------------------------------------------------------------------------------------------
# Metadata -> items
# ------------------------------------------------------------------------------------------------


def flickr_items(data_dir: str | os.PathLike, metadata: str | os.PathLike | None = None) -> list[DownloadItem]:
    """The images of the Flickr Style CSV (``metadata``, or found in ``data_dir`` like the builder does)."""
    data_dir = Path(data_dir)
    csv_path = Path(metadata) if metadata else (_find_csv(data_dir) if data_dir.is_dir() else None)
    if csv_path is None or not csv_path.is_file():
        raise FileNotFoundError(
            f"Flickr Style: metadata CSV not found ({str(metadata or data_dir)!r}). Put the published "
            "flickr_style.csv.gz (BVLC/caffe examples/finetune_flickr_style/) in data_dir or pass --metadata."
        )
    rows = _read_csv(csv_path)
    columns = list(rows[0]) if rows else []
    url_col, split_col = _pick(columns, _URL_COLUMNS), _pick(columns, _SPLIT_COLUMNS)
    if url_col is None or "label" not in columns:
        raise ValueError(f"Flickr Style: {csv_path.name} needs 'image_url' and 'label' columns; found {columns}")
    names_file = csv_path.parent / "style_names.txt"
    names = (
        [n.strip() for n in names_file.read_text(encoding="utf-8").splitlines() if n.strip()]
        if names_file.is_file() else list(FLICKR_STYLE_NAMES)
    )
    id_col = columns[0] if columns and columns[0].strip() in ("", "id", "flickr_id") else None
    items = []
    for n, row in enumerate(rows, 2):
        url = row[url_col].strip()
        file_name = os.path.basename(urlparse(url).path)
        if not file_name:
            raise ValueError(f"Flickr Style: {csv_path.name} line {n}: no file name in URL {url!r}")
        raw = row["label"].strip()
        if raw.isdigit() and int(raw) < len(names):
            label = names[int(raw)]
        elif raw in names:
            label = raw
        else:
            raise ValueError(f"Flickr Style: {csv_path.name} line {n}: unknown label {raw!r}")
        image_id = row[id_col].strip() if id_col is not None else Path(file_name).stem
        split = row[split_col].strip().lower() if split_col else "train"
        items.append(DownloadItem(id=image_id, url=url, file_name=file_name, split=split, classes=(label,)))
    return items


def ava_items(data_dir: str | os.PathLike, metadata: str | os.PathLike | None = None) -> list[DownloadItem]:
    """The images of the AVA style lists (``metadata`` = the ``style_image_lists`` folder, or found in
    ``data_dir``). ``url`` is empty: AVA publishes ids, not URLs (see ``base_url``)."""
    lists_dir = Path(metadata) if metadata else (_find_lists_dir(Path(data_dir)) if Path(data_dir).is_dir() else None)
    needed = ("styles.txt", "train.jpgl", "train.lab", "test.jpgl", "test.multilab")
    if lists_dir is None or any(not (lists_dir / name).is_file() for name in needed):
        raise FileNotFoundError(
            f"AVA style: style_image_lists/ with {list(needed)} not found ({str(metadata or data_dir)!r}). "
            "Put the AVA release's style_image_lists/ in data_dir or pass --metadata."
        )
    names = _parse_styles(lists_dir / "styles.txt")
    items = []
    train_ids, train_lab = _read_lines(lists_dir / "train.jpgl"), _read_lines(lists_dir / "train.lab")
    if len(train_ids) != len(train_lab):
        raise ValueError(f"AVA style: train.jpgl has {len(train_ids)} ids but train.lab has {len(train_lab)} labels")
    for n, (image_id, lab) in enumerate(zip(train_ids, train_lab), 1):
        if not lab.isdigit() or not 1 <= int(lab) <= len(names):
            raise ValueError(f"AVA style: train.lab line {n}: expected a label in 1..{len(names)}, got {lab!r}")
        items.append(DownloadItem(id=image_id, url="", file_name=f"{image_id}.jpg", split="train",
                                  classes=(names[int(lab) - 1],)))
    test_ids, test_rows = _read_lines(lists_dir / "test.jpgl"), _read_lines(lists_dir / "test.multilab")
    if len(test_ids) != len(test_rows):
        raise ValueError(f"AVA style: test.jpgl has {len(test_ids)} ids but test.multilab has {len(test_rows)} rows")
    for image_id, row in zip(test_ids, test_rows):
        positives = tuple(name for name, v in zip(names, row.split()) if v == "1")
        items.append(DownloadItem(id=image_id, url="", file_name=f"{image_id}.jpg", split="test", classes=positives))
    return items


def _normalise(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", name).strip().lower()


def select_items(
    items: Sequence[DownloadItem],
    classes: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[DownloadItem]:
    """Filter by style names (case, ``_`` and spaces ignored; an item matches if one of its styles does) and
    splits, then keep at most ``limit`` items taken round-robin over (split, first style) groups in file
    order, so that a small partial download still covers every split and style."""
    selected = list(items)
    if classes:
        known = {_normalise(c): c for item in items for c in item.classes}
        unknown = [c for c in classes if _normalise(c) not in known]
        if unknown:
            raise ValueError(f"classes: unknown style(s) {unknown}; known: {sorted(set(known.values()))}")
        wanted = {_normalise(c) for c in classes}
        selected = [it for it in selected if any(_normalise(c) in wanted for c in it.classes)]
    if splits:
        known_splits = sorted({it.split for it in items})
        unknown = [s for s in splits if s not in known_splits]
        if unknown:
            raise ValueError(f"splits: unknown split(s) {unknown}; the metadata has {known_splits}")
        selected = [it for it in selected if it.split in splits]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        groups: dict[tuple[str, str], list[DownloadItem]] = defaultdict(list)
        for it in selected:
            groups[(it.split, it.classes[0] if it.classes else "")].append(it)
        queues = [list(reversed(group)) for group in groups.values()]
        picked: list[DownloadItem] = []
        while len(picked) < limit and any(queues):
            for queue in queues:
                if queue and len(picked) < limit:
                    picked.append(queue.pop())
        order = {id(it): i for i, it in enumerate(selected)}
        selected = sorted(picked, key=lambda it: order[id(it)])
    return selected


def rewrite_url(item: DownloadItem, base_url: str | None) -> str:
    """The URL to fetch for ``item``.

    ``base_url`` with ``{id}``, ``{name}`` (file name) or ``{path}`` (the original URL's path) is a template;
    any other ``base_url`` replaces the scheme and host of the original URL (a mirror of the same paths,
    or the local server of the tests). ``None`` keeps the original URL.
    """
    if not base_url:
        if not item.url:
            raise ValueError(
                f"image {item.id}: no URL in the metadata; pass base_url, a template such as "
                "'https://mirror/ava/{id}.jpg' (AVA publishes image ids, not URLs)"
            )
        return item.url
    path = urlparse(item.url).path if item.url else f"/{item.file_name}"
    if "{" in base_url:
        try:
            return base_url.format(id=item.id, name=item.file_name, path=path.lstrip("/"))
        except (KeyError, IndexError) as err:
            raise ValueError(f"base_url {base_url!r}: only {{id}}, {{name}} and {{path}} can be used ({err})") from err
    return base_url.rstrip("/") + path


# ------------------------------------------------------------------------------------------------
# Fetching
# ------------------------------------------------------------------------------------------------


def is_decodable(path: str | os.PathLike) -> bool:
    try:
        open_image_rgb(str(path))
        return True
    except BadImageError:
        return False


class _Fetcher:
    """Fetches one item with retries; one ``requests.Session`` per worker thread."""

    def __init__(self, image_dir: Path, timeout: float, retries: int, backoff: float, base_url: str | None,
                 verify_existing: bool, session_factory: Callable[[], object] | None = None):
        self.image_dir, self.timeout, self.retries, self.backoff = image_dir, timeout, retries, backoff
        self.base_url, self.verify_existing = base_url, verify_existing
        self.session_factory = session_factory or _new_session
        self._local = threading.local()

    def session(self):
        if getattr(self._local, "session", None) is None:
            self._local.session = self.session_factory()
        return self._local.session

    def __call__(self, item: DownloadItem) -> DownloadResult:
        final = self.image_dir / item.file_name
        if final.is_file():
            if not self.verify_existing or is_decodable(final):
                return DownloadResult(item, PRESENT)
            logger.warning("%s is not decodable; deleted and fetched again", final)
            final.unlink()
        part = final.with_name(final.name + PART_SUFFIX)
        url = rewrite_url(item, self.base_url)
        status, detail = "connection_error", ""
        for attempt in range(1, self.retries + 2):
            try:
                outcome = self._fetch(url, part)
            except Exception as err:  # requests / urllib3 / OSError while streaming
                status, detail, transient = _classify(err)
                outcome = None
                if not transient:
                    break
            else:
                status, detail, transient, retry_after = outcome
                if status == OK:
                    if not is_decodable(part):
                        status, detail = "invalid", "downloaded file is not a decodable image; deleted"
                        break
                    os.replace(part, final)
                    return DownloadResult(item, OK, attempts=attempt)
                if not transient:
                    break
            if attempt <= self.retries:
                delay = self.backoff * 2 ** (attempt - 1) * (1 + random.random() / 2)
                if outcome is not None and outcome[3] is not None:
                    delay = max(delay, outcome[3])
                time.sleep(min(delay, 60.0))
        part.unlink(missing_ok=True)
        return DownloadResult(item, status, detail, attempts=attempt)

    def _fetch(self, url: str, part: Path) -> tuple[str, str, bool, float | None]:
        """(status, detail, transient, retry_after); the body goes to ``part`` when the status is OK."""
        with self.session().get(url, timeout=(self.timeout, self.timeout), stream=True) as response:
            code = response.status_code
            if code in RETRY_STATUS:
                return "http_error", f"HTTP {code}", True, _retry_after(response.headers.get("Retry-After"))
            if code >= 400:
                return ("dead" if code in (403, 404, 410) else "http_error"), f"HTTP {code}", False, None
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if content_type.startswith("text/") or "html" in content_type:
                return "invalid", f"HTTP {code} with Content-Type {content_type}, not an image", False, None
            if "photo_unavailable" in response.url:
                return "unavailable", f"redirected to Flickr's placeholder {response.url}", False, None
            digest = hashlib.sha1()
            with open(part, "wb") as out:
                for chunk in response.iter_content(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
        if digest.hexdigest() == FLICKR_MISSING_IMAGE_SHA1:
            part.unlink(missing_ok=True)
            return "unavailable", "Flickr's 'photo unavailable' placeholder image", False, None
        return OK, "", False, None


def _new_session():
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=4, max_retries=0)  # retries: see module docstring
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _classify(err: Exception) -> tuple[str, str, bool]:
    """(status, detail, transient) of an exception raised while fetching."""
    import requests

    text = f"{type(err).__name__}: {err}"
    if isinstance(err, requests.Timeout) or "timed out" in str(err).lower():
        return "timeout", text, True
    if isinstance(err, requests.exceptions.ChunkedEncodingError) or "IncompleteRead" in str(err):
        return "incomplete", text, True
    if isinstance(err, (requests.ConnectionError, ConnectionError)):
        return "connection_error", text, True
    if isinstance(err, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                        requests.exceptions.InvalidSchema)):
        return "dead", text, False
    if isinstance(err, OSError):  # local disk trouble: not the URL's fault, say so and stop retrying
        return "connection_error", text, False
    return "connection_error", text, True


# ------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------


def download_images(
    dataset: str,
    data_dir: str | os.PathLike,
    *,
    metadata: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    base_url: str | None = None,
    classes: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    limit: int | None = None,
    workers: int = 16,
    timeout: float = 20.0,
    retries: int = 3,
    backoff: float = 1.0,
    verify_existing: bool = False,
    report_file: str | os.PathLike | None = None,
    progress: bool = True,
    session_factory: Callable[[], object] | None = None,
) -> DownloadReport:
    """Download the images of ``dataset`` (``"flickr"`` or ``"ava"``) listed in its metadata into
    ``image_dir`` (default ``data_dir/images``); resumable (see the module docstring).

    Args:
        metadata: the Flickr CSV / the AVA ``style_image_lists`` folder (default: found in ``data_dir``).
        base_url: a mirror prefix replacing scheme + host, or a template with ``{id}``/``{name}``/``{path}``
            (required for AVA, whose metadata has no URLs).
        classes, splits, limit: partial download (see `select_items`).
        workers: download threads. timeout: seconds for the connection and for each read.
        retries: extra attempts after a transient failure; ``backoff``: first delay in seconds (doubles).
        verify_existing: decode the files already present and re-fetch the undecodable ones.
        report_file: CSV of the failures (default ``data_dir/<dataset>_download_report.csv``).
        session_factory: builds one ``requests.Session``-like object per thread (tests, proxies, auth).
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    for name, value, low in (("workers", workers, 1), ("retries", retries, 0)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if timeout <= 0 or backoff < 0:
        raise ValueError(f"timeout must be > 0 and backoff >= 0, got timeout={timeout}, backoff={backoff}")
    data_dir = Path(data_dir).expanduser()
    if dataset == "ava":
        if not base_url:
            raise ValueError(
                "AVA style publishes image ids, not URLs: pass base_url, a URL template such as "
                "'https://mirror.example/ava/images/{id}.jpg', or download the official AVA archive and put its "
                "images in data_dir/images/"
            )
        items = ava_items(data_dir, metadata)
    else:
        items = flickr_items(data_dir, metadata)
    unique: dict[str, DownloadItem] = {}
    for item in items:  # two rows with one file name would race on its .part file
        unique.setdefault(item.file_name, item)
    items = select_items(list(unique.values()), classes=classes, splits=splits, limit=limit)
    image_dir = Path(image_dir).expanduser() if image_dir else data_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    report = DownloadReport(image_dir=image_dir, requested=len(items))
    fetch = _Fetcher(image_dir, timeout, retries, backoff, base_url, verify_existing, session_factory)

    from tqdm.auto import tqdm

    with tqdm(total=len(items), unit="img", desc=f"{dataset} images", disable=not progress) as bar, \
            ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(fetch, item) for item in items]
        try:
            for future in as_completed(futures):
                result = future.result()
                if result.status == OK:
                    report.downloaded += 1
                elif result.status == PRESENT:
                    report.already_present += 1
                else:
                    report.failures.append(result)
                bar.update(1)
                bar.set_postfix(failed=report.num_failed, refresh=False)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise

    order = {item.file_name: i for i, item in enumerate(items)}
    report.failures.sort(key=lambda r: order[r.item.file_name])
    report.report_file = Path(report_file) if report_file else data_dir / f"{dataset}_download_report.csv"
    write_report(report.failures, report.report_file)
    logger.info("%s", report.summary())
    return report


REPORT_COLUMNS = ("id", "split", "url", "file", "status", "detail", "attempts")


def write_report(failures: Sequence[DownloadResult], path: str | os.PathLike) -> Path:
    """The failures as a CSV (written to a temporary name, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + PART_SUFFIX)
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(REPORT_COLUMNS)
        for r in failures:
            writer.writerow([r.item.id, r.item.split, r.item.url, r.item.file_name, r.status, r.detail, r.attempts])
    os.replace(tmp, path)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="artstyle-download",
        description="Download the Flickr Style / AVA style images listed in their published metadata "
        "(resumable: run it again to fetch what is missing).",
    )
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--data_dir", required=True, help="dataset folder; images go to DATA_DIR/images/")
    parser.add_argument("--metadata", help="the Flickr CSV or the AVA style_image_lists/ folder (default: in data_dir)")
    parser.add_argument("--image_dir", help="where to put the images (default: DATA_DIR/images)")
    parser.add_argument("--base_url", help="mirror prefix replacing scheme+host, or template with {id}/{name}/{path} "
                        "(required for ava)")
    parser.add_argument("--classes", nargs="+", help="only these styles (names as in the metadata)")
    parser.add_argument("--splits", nargs="+", help="only these splits (train, test)")
    parser.add_argument("--limit", type=int, help="at most this many images, spread over splits and styles")
    parser.add_argument("--workers", type=int, default=16, help="download threads (default 16)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds to connect and per read (default 20)")
    parser.add_argument("--retries", type=int, default=3, help="retries of a transient failure (default 3)")
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds, doubling (default 1)")
    parser.add_argument("--verify_existing", action="store_true", help="decode files already present; re-fetch bad")
    parser.add_argument("--report", help="failure report CSV (default DATA_DIR/<dataset>_download_report.csv)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = download_images(
            args.dataset, args.data_dir, metadata=args.metadata, image_dir=args.image_dir, base_url=args.base_url,
            classes=args.classes, splits=args.splits, limit=args.limit, workers=args.workers, timeout=args.timeout,
            retries=args.retries, backoff=args.backoff, verify_existing=args.verify_existing,
            report_file=args.report, progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError) as err:
        build_parser().error(str(err))
    print(report.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
