"""Files behind URLs (gs://bucket/path, s3://..., any filesystem fsspec knows): fetched to read, copied to publish.

A TPU pod's hosts share no disk, so datasets and exports live in a bucket. `gcsfs` (a dependency) gives fsspec
the gs:// scheme; credentials come from the VM's service account or `gcloud auth application-default login`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec

__all__ = ["fetched", "is_url", "upload"]


def is_url(spec: object) -> bool:
    """A scheme://path string (not a Windows drive or a local path)."""
    text = str(spec)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isidentifier()


@contextmanager
def fetched(url: str) -> Iterator[Path]:
    """The file or folder at `url`, downloaded to a temporary local path for the duration of the block."""
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:  # an unknown scheme, or its filesystem package is not installed
        raise FileNotFoundError(f"{url}: cannot open this URL ({e})") from None
    if not fs.exists(root):
        raise FileNotFoundError(f"{url}: no such file or folder")
    local = Path(tempfile.mkdtemp(prefix="sq-jax-fetch-"))
    try:
        target = local / Path(root.rstrip("/")).name
        if fs.isdir(root):
            fs.get(root.rstrip("/") + "/", str(target) + "/", recursive=True)
        else:
            fs.get(root, str(target))
        yield target
    finally:
        shutil.rmtree(local, ignore_errors=True)


def upload(local: str | Path, url: str) -> str:
    """Copy a local file or folder tree to `url` (its contents land under it); returns the URL."""
    fs, root = fsspec.core.url_to_fs(url)
    local = Path(local)
    if local.is_dir():
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            fs.put_file(str(path), f"{root.rstrip('/')}/{path.relative_to(local).as_posix()}")
    else:
        fs.put_file(str(local), root)
    return url
