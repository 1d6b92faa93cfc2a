"""Content fingerprints of local files and folders, read once: a streamed SHA-256, cached per file.

A file's fingerprint is the SHA-256 of its bytes (read in 1 MiB blocks); a folder's is the SHA-256 of its sorted
relative paths and their files' hashes. Hidden names (temporary parts, `.cache/`, `.git/`) are not content.

The cache (`fingerprints.json` under `$SQ_JAX_CACHE_DIR`, default `~/.cache/sq-jax`) maps a file's absolute path
to the hash it had at a given (size, mtime_ns, inode, ctime_ns): a 15 GB model folder is hashed once, and every
later fingerprint of it only stats its files. Each update re-reads the file under a lock, merges and replaces it
atomically, so concurrent processes never corrupt it (at worst one of them hashes a file again). A file changed
(mtime) within `RACY_S` seconds of being hashed is not cached: a second write in the same timestamp tick would
keep its size and times (git's "racy clean" problem).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from filelock import FileLock

from sq_jax.data.dataset import list_parts, write_json_atomic

log = logging.getLogger(__name__)
CACHE_ENV = "SQ_JAX_CACHE_DIR"
BLOCK = 1 << 20
RACY_S = 2.0
LOUD_BYTES = 1 << 30  # hashing more than this at once is worth a log line (a model's weights)


def cache_file() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "sq-jax")
    return Path(os.path.expanduser(root)) / "fingerprints.json"


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, streamed in 1 MiB blocks (uncached)."""
    digest, buffer = hashlib.sha256(), bytearray(BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def _stamp(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino, "ctime_ns": st.st_ctime_ns}


def _read_cache(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        files = json.loads(path.read_text()).get("files", {})
        return files if isinstance(files, dict) else {}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        log.warning("%s: unreadable fingerprint cache (%s); starting a new one", path, e)
        return {}


def hash_files(paths: Iterable[str | Path]) -> list[str]:
    """SHA-256 of each file, from the cache where the file's stat is unchanged, else read (and cached)."""
    cache = cache_file()
    known = _read_cache(cache)
    found: dict[str, dict[str, Any]] = {}
    hashes, todo = [], []
    for path in paths:
        key = os.path.realpath(path)
        stamp = _stamp(os.stat(key))
        entry = known.get(key)
        if entry is not None and {k: entry.get(k) for k in stamp} == stamp:
            hashes.append(entry["sha256"])
        else:
            hashes.append(None)
            todo.append((len(hashes) - 1, key, stamp))
    total = sum(stamp["size"] for _, _, stamp in todo)
    if total > LOUD_BYTES:
        log.info("hashing %d file(s), %.1f GB, once (cached in %s)", len(todo), total / 1e9, cache)
    for i, key, stamp in todo:
        hashes[i] = sha256_file(key)
        after = _stamp(os.stat(key))
        settled = time.time_ns() - after["mtime_ns"] > RACY_S * 1e9  # a later write moves an old mtime
        if after == stamp and settled:  # unchanged while read, and not racily new
            found[key] = {**stamp, "sha256": hashes[i]}
    if found:
        _merge_into_cache(cache, found)
    return hashes


def _merge_into_cache(cache: Path, found: dict[str, dict[str, Any]]) -> None:
    """Add entries under a lock, against the file as it is now; entries of files gone since are dropped."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache) + ".lock"):
        files = {k: v for k, v in _read_cache(cache).items() if os.path.exists(k)}
        files.update(found)
        write_json_atomic(cache, {"version": 1, "files": files})


def folder_files(folder: str | Path) -> list[Path]:
    """The content files of a folder, sorted by relative path; hidden files and folders are skipped."""
    root, out = Path(folder), []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def content_hash(path: str | Path) -> str:
    """The content fingerprint of a file or a folder (see the module doc); FileNotFoundError if it is neither."""
    path = Path(os.path.expanduser(path))
    if path.is_file():
        return hash_files([path])[0]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder to fingerprint")
    files = folder_files(path)
    digest = hashlib.sha256()
    for file, sha in zip(files, hash_files(files)):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha}\n".encode())
    return digest.hexdigest()


def local_content_hash(value: str) -> str | None:
    """The content hash of a local file or folder; None for anything else (a hub id, a `procedural:` source),
    which is fingerprinted by its name (and revision) in the config."""
    path = Path(os.path.expanduser(value))
    return content_hash(path) if path.exists() else None


def external_fingerprints(value: Any) -> dict[str, str]:
    """Content hashes of every existing local path named anywhere in a (nested) config value."""
    out: dict[str, str] = {}
    if isinstance(value, dict):
        for v in value.values():
            out.update(external_fingerprints(v))
    elif isinstance(value, list):
        for v in value:
            out.update(external_fingerprints(v))
    elif isinstance(value, str) and ("/" in value or value.endswith((".jsonl", ".parquet"))):
        sha = local_content_hash(value)
        if sha is not None:
            out[value] = sha
    return out


def verify_parts(folder: str | Path, recorded: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The parts of a record set as they are on disk ({name, rows, bytes, sha256}, hashes via the cache), and how
    they differ from the `recorded` ones (a manifest's list): parts missing, added or changed (size or SHA-256)."""
    files = list_parts(folder)
    was = {p["name"]: p for p in recorded}
    parts, problems = [], []
    for path, sha in zip(files, hash_files(files)):
        size, old = path.stat().st_size, was.pop(path.name, None)
        if old is not None and old.get("bytes") == size and old.get("sha256") == sha:
            parts.append(dict(old))
            continue
        with path.open("rb") as f:
            rows = sum(1 for line in f if line.strip())
        parts.append({"name": path.name, "rows": rows, "bytes": size, "sha256": sha})
        problems.append(f"{path.name} is not in the manifest" if old is None else
                        f"{path.name} changed ({old.get('bytes')} bytes, sha256 {old.get('sha256')} in the manifest; "
                        f"now {size} bytes, sha256 {sha})")
    problems += [f"{name} is missing" for name in sorted(was)]
    return parts, problems
