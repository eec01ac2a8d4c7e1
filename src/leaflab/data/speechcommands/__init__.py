"""Google Speech Commands v0.02: download (resumable, SHA-256 verified), safe extraction, atomic move into place.

    download_speechcommands(url, sha256, raw_root)  →  raw_root/speechcommands/<word>/<speaker>_nohash_<n>.wav, …

- The archive is downloaded to `raw_root/.tmp-download/<sha256[:16]>-<name>.part`, outside the target folder.
  An interrupted download is kept there and resumed on the next run with an HTTP Range request (when the server
  answers 206; a server that ignores Range restarts it from the beginning).
- The finished file must match the expected SHA-256; a mismatch deletes it (resuming a wrong file cannot help).
- Extraction refuses any member that could land outside the target (absolute paths, `..`), links (symbolic or
  hard), devices and FIFOs, naming the member. It extracts into `raw_root/.tmp-speechcommands-*` and renames the
  result into place, so a failure never leaves a half-written `raw_root/speechcommands`. The archive is deleted
  once it has been extracted.
- Leftovers of a killed run: the next run removes its staging folders (atomic.staging_dir) and any download of
  another URL or checksum; a complete archive of the same URL and checksum (killed while extracting) is resumed
  as usual — the server answers the Range request from its end with 416 — then verified and extracted, without
  downloading it again.
"""

from __future__ import annotations

import hashlib
import http.client
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from leaflab.data.atomic import replace_dir, staging_dir
from leaflab.data.splits import TESTING_LIST, VALIDATION_LIST
from leaflab.errors import LeaflabError

TARGET_NAME = "speechcommands"
DOWNLOAD_DIR = ".tmp-download"
CHUNK_BYTES = 1 << 20


def partial_path(raw_root: Path, url: str, sha256: str) -> Path:
    """Where the (resumable) download of `url` lives: outside the target folder, named by its checksum."""
    name = PurePosixPath(urllib.request.urlparse(url).path).name or "archive"
    return Path(raw_root) / DOWNLOAD_DIR / f"{sha256[:16]}-{name}.part"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES * 4), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(url: str, dest: Path, timeout_s: float = 60.0, progress: bool = True) -> Path:
    """Download `url` to `dest`, resuming from a partial `dest` with an HTTP Range request when possible."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = dest.stat().st_size if dest.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "leaflab"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    hint = (f"the partial download is kept at {dest} and resumes on the next run" if have or dest.exists()
            else "check the network connection and data.speechcommands.url")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to fetch: the partial file is probably complete
            return dest
        raise LeaflabError(f"download of {url} failed: HTTP {err.code} {err.reason}; "
                           f"check data.speechcommands.url ({hint})") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise LeaflabError(f"download of {url} failed: {reason}; you may be offline ({hint}); "
                           "or set data.source: synthetic for the built-in offline dataset") from None
    with response:
        status = getattr(response, "status", 200)
        length = response.headers.get("Content-Length")
        mode = "wb"
        if have and status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {have}-"):
                raise LeaflabError(f"download of {url}: the server answered Content-Range {content_range!r} to a "
                                   f"request from byte {have}; delete {dest} and run again")
            mode = "ab"
        else:
            have = 0  # the server ignored the Range header: start again
        total = have + int(length) if length and length.isdigit() else None
        bar = _progress_bar(total, have, PurePosixPath(dest.name).stem, progress)
        try:
            with open(dest, mode) as f:
                while True:
                    block = response.read(CHUNK_BYTES)
                    if not block:
                        break
                    f.write(block)
                    bar.update(len(block))
        except (OSError, socket.timeout, http.client.HTTPException) as err:
            raise LeaflabError(f"download of {url} was interrupted ({err}); the partial download is kept at "
                               f"{dest} and resumes on the next run") from None
        finally:
            bar.close()
    if total is not None and dest.stat().st_size != total:
        raise LeaflabError(f"download of {url} ended early ({dest.stat().st_size} of {total} bytes); the partial "
                           f"download is kept at {dest} and resumes on the next run")
    return dest


def _progress_bar(total, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    tqdm.monitor_interval = 0
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not enabled, mininterval=0.5)


def _safe_member_path(member: tarfile.TarInfo, archive: Path) -> PurePosixPath | None:
    """The member's relative path, None for the root entry; LeaflabError for anything unsafe."""
    name = member.name.replace("\\", "/")
    path = PurePosixPath(name)
    where = f"{archive}: member {member.name!r}"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise LeaflabError(f"{where} has an absolute path; refusing to extract an archive that writes outside "
                           "its folder (is data.speechcommands.url right?)")
    if ".." in path.parts:
        raise LeaflabError(f"{where} contains '..'; refusing to extract an archive that writes outside its "
                           "folder (is data.speechcommands.url right?)")
    if member.issym() or member.islnk():
        raise LeaflabError(f"{where} is a link (to {member.linkname!r}); links are refused")
    if not (member.isfile() or member.isdir()):
        raise LeaflabError(f"{where} is a device, FIFO or other special file; refused")
    parts = [p for p in path.parts if p not in ("", ".")]
    return PurePosixPath(*parts) if parts else None


def safe_extract(archive: Path, dest: Path) -> int:
    """Extract a .tar(.gz) into `dest` (must exist), refusing unsafe members; returns the number of files."""
    n_files = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                rel = _safe_member_path(member, archive)
                if rel is None:
                    continue
                target = dest.joinpath(*rel.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                with source, open(target, "xb") as out:
                    shutil.copyfileobj(source, out, CHUNK_BYTES)
                n_files += 1
            # tarfile stops quietly at a damaged header: the rest must be end-of-archive padding (zeros), and
            # reading it to the end makes gzip check its CRC
            while block := tar.fileobj.read(CHUNK_BYTES):
                if block.strip(b"\0"):
                    raise tarfile.ReadError(f"data after the end-of-archive marker at byte {tar.offset}: a damaged "
                                            "header cut the archive short")
    except LeaflabError:
        raise
    except FileExistsError as err:
        raise LeaflabError(f"{archive}: member {err.filename} appears twice; the archive is damaged") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise LeaflabError(f"{archive}: corrupted or not a tar archive ({type(err).__name__}: {err}); "
                           "delete it and download again") from None
    return n_files


def _dataset_root(extracted: Path) -> Path:
    """The folder that holds the split lists: the extraction folder or its single sub-folder."""
    if (extracted / VALIDATION_LIST).is_file():
        return extracted
    subdirs = [p for p in extracted.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and (subdirs[0] / VALIDATION_LIST).is_file():
        return subdirs[0]
    raise LeaflabError(f"the archive has no {VALIDATION_LIST}: it is not Speech Commands "
                       "(check data.speechcommands.url and data.speechcommands.sha256)")


def download_speechcommands(url: str, sha256: str, raw_root: str | Path, timeout_s: float = 60.0,
                            progress: bool = True) -> dict:
    """Download, verify and extract Speech Commands into `raw_root/speechcommands`; return a summary."""
    raw_root = Path(raw_root)
    target = raw_root / TARGET_NAME
    sha256 = sha256.lower()
    archive = partial_path(raw_root, url, sha256)
    start = time.perf_counter()
    with staging_dir(target) as tmp:
        _remove_other_downloads(archive)
        try:
            download_file(url, archive, timeout_s=timeout_s, progress=progress)
        except LeaflabError:
            if archive.exists() and archive.stat().st_size == 0:
                archive.unlink()
            _remove_if_empty(archive.parent)  # keep only a partial download worth resuming
            raise
        actual = sha256_of(archive)
        if actual != sha256:
            size = archive.stat().st_size
            archive.unlink()
            _remove_if_empty(archive.parent)
            raise LeaflabError(f"{url}: SHA-256 mismatch (expected data.speechcommands.sha256 = {sha256}, got "
                               f"{actual} for {size} bytes); the file was deleted. Check the URL and checksum and "
                               "run again")
        download_s = time.perf_counter() - start
        n_files = safe_extract(archive, tmp)
        root = _dataset_root(tmp)
        if not (root / TESTING_LIST).is_file():
            raise LeaflabError(f"the archive has no {TESTING_LIST}: it is not Speech Commands")
        replace_dir(root, target)
    archive.unlink()
    _remove_if_empty(archive.parent)
    return {"source": "speechcommands", "url": url, "sha256": sha256, "files": n_files,
            "download_s": round(download_s, 1), "seconds": round(time.perf_counter() - start, 1),
            "path": str(target)}


def _remove_other_downloads(archive: Path) -> None:
    """Delete what earlier runs left in the download folder for another URL or checksum (never resumable now)."""
    if archive.parent.is_dir():
        for path in archive.parent.iterdir():
            if path == archive:
                continue
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
