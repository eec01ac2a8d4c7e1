"""Helpers for the data tests: tiny Speech-Commands-shaped folders and archives, and a local HTTP server."""

from __future__ import annotations

import contextlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import soundfile as sf

from leaflab.data.splits import which_set

SR = 16000


def tone(seconds: float, freq: float = 440.0, sr: int = SR, amplitude: float = 0.3, channels: int = 1,
         seed: int = 0) -> np.ndarray:
    """float32 [n] or [n, channels]: a sine plus a little noise (never all-zero)."""
    t = np.arange(int(round(seconds * sr))) / sr
    rng = np.random.default_rng(seed)
    x = amplitude * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    x = x.astype(np.float32)
    if channels > 1:
        x = np.stack([x * (1 - 0.3 * c) for c in range(channels)], axis=1)
    return x


def loudest_window_reference(x: np.ndarray, n: int) -> int:
    """Start of the n-sample window of int16 x with the largest sum of |x| (the first on a tie), by brute force."""
    sums = [np.abs(x[start:start + n].astype(np.int64)).sum() for start in range(x.size - n + 1)]
    return int(np.argmax(sums))


def make_speechcommands_tree(root: Path, words=("cat", "dog", "yes"), speakers=None, clips_per_speaker: int = 1,
                             seconds: float = 0.5) -> dict[str, str]:
    """A tiny Speech Commands v2 layout in `root`: word folders of 16-bit WAVs, the two split lists (hash rule on
    the speaker id, so whole speakers are held out), a `_background_noise_` folder, README and LICENSE.
    Returns {relative path: 'train'|'validation'|'test'}."""
    speakers = speakers or ["0a1b2c3d", "11aa22bb", "3f4e5d6c", "00001001", "c0ffee00", "deadbeef", "12345678"]
    root.mkdir(parents=True, exist_ok=True)
    splits, lists = {}, {"validation": [], "testing": []}
    for wi, word in enumerate(words):
        (root / word).mkdir(exist_ok=True)
        for si, speaker in enumerate(speakers):
            for n in range(clips_per_speaker):
                rel = f"{word}/{speaker}_nohash_{n}.wav"
                sf.write(root / rel, tone(seconds, 200 + 50 * wi + 10 * si + n, seed=wi * 100 + si), SR,
                         subtype="PCM_16")
                split = which_set(rel, 20.0, 20.0)
                splits[rel] = {"training": "train", "validation": "validation", "testing": "test"}[split]
                if split in lists:
                    lists[split].append(rel)
    (root / "validation_list.txt").write_text("".join(p + "\n" for p in sorted(lists["validation"])))
    (root / "testing_list.txt").write_text("".join(p + "\n" for p in sorted(lists["testing"])))
    (root / "_background_noise_").mkdir(exist_ok=True)
    sf.write(root / "_background_noise_" / "white_noise.wav", tone(3.0, 50.0), SR, subtype="PCM_16")
    (root / "_background_noise_" / "README.md").write_text("noise\n")
    (root / "README.md").write_text("tiny speech commands\n")
    (root / "LICENSE").write_text("CC BY 4.0\n")
    return splits


FOLDER_SPEAKERS = {"alice": "train", "bob": "train", "carol": "train", "dave": "train",  # by the hash rule
                   "anna": "validation", "chen": "validation", "heidi": "test", "olivia": "test"}  # at 10 %/10 %
BROKEN = "hello/bob_nohash_1.wav"


def make_folder_dataset(root: Path, labels=("hello", "lights_on", "zwei"),
                        speakers: dict[str, str] = FOLDER_SPEAKERS) -> dict[str, str]:
    """A user's own folder in `root`: `<label>/<speaker>_nohash_0.<ext>` in WAV, FLAC and OGG, at 16 and 44.1 kHz,
    mono and stereo, 0.6 to 1.4 s long, plus one broken file (BROKEN), a README and a `_background_noise_`
    folder that are not clips. No split lists: the default hash rule (10 %, 10 %) puts every speaker in the
    split `speakers` names. Returns {relative path of each good clip: split}."""
    formats = (("wav", "PCM_16"), ("flac", "PCM_16"), ("ogg", "VORBIS"))
    expected = {}
    for li, label in enumerate(labels):
        (root / label).mkdir(parents=True, exist_ok=True)
        for si, (speaker, split) in enumerate(speakers.items()):
            rate = SR if (li + si) % 2 == 0 else 44100
            extension, subtype = formats[(li + si) % 3]
            audio = tone(0.6 + 0.1 * ((li * 3 + si) % 9), 220.0 + 40 * li + 15 * si, sr=rate,
                         channels=1 + si % 2, seed=li * 10 + si)
            rel = f"{label}/{speaker}_nohash_0.{extension}"
            sf.write(root / rel, audio, rate, subtype=subtype)
            expected[rel] = split
    (root / BROKEN).write_text("not a recording\n")
    (root / "README.md").write_text("my words\n")
    (root / "_background_noise_").mkdir(exist_ok=True)
    sf.write(root / "_background_noise_" / "hum.wav", tone(2.0, 50.0), SR, subtype="PCM_16")
    return expected


def tar_gz_of(folder: Path, archive: Path, prefix: str = ".") -> Path:
    """Pack a folder like the Speech Commands archive (members './word/file.wav', …)."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=prefix)
    return archive


def tar_gz_with_member(archive: Path, name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE,
                       linkname: str = "") -> Path:
    """A small valid .tar.gz holding a split list plus one crafted member (e.g. '../evil', a symlink)."""
    with tarfile.open(archive, "w:gz") as tar:
        for member_name, payload in (("validation_list.txt", b""), ("testing_list.txt", b"")):
            info = tarfile.TarInfo(member_name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        if kind == tarfile.REGTYPE:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        else:
            tar.addfile(info)
    return archive


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves the server's `files` {url path: bytes}, honouring `Range: bytes=N-` when `ranges` is on."""

    def do_GET(self):  # noqa: N802
        server = self.server
        body = server.files.get(self.path)
        server.requests.append((self.path, self.headers.get("Range")))
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        range_header = self.headers.get("Range")
        if server.ranges and range_header and range_header.startswith("bytes="):
            start = int(range_header[6:].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("Content-Type", "application/gzip")
        self.end_headers()
        payload = body[start:] if server.send_at_most is None else body[start:start + server.send_at_most]
        self.wfile.write(payload)  # send_at_most: the connection drops early, as on a flaky network
        server.bytes_sent += len(payload)
        self.close_connection = server.send_at_most is not None

    def log_message(self, *args):  # keep test output quiet
        pass


@contextlib.contextmanager
def http_server(files: dict[str, bytes], ranges: bool = True, send_at_most: int | None = None):
    """A threaded HTTP server on 127.0.0.1 (random port) serving `files`; yields (base_url, server).

    send_at_most: announce the full length but send only this many bytes, then close (an interrupted download).
    """
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    server.files, server.ranges, server.requests, server.bytes_sent = dict(files), ranges, [], 0
    server.send_at_most = send_at_most
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
