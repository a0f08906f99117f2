"""The code bundle shipped to the cluster (`spark-submit --py-files`), and the other upload artifacts.

The bundle is a zip of the `pipeline/` and `jobs/` packages that Python imports straight from the
archive (zipimport). It is deterministic: entries are sorted, timestamps and permissions fixed, so the
same source tree always gives the same bytes (and the same SHA-256 in the upload manifest), and a
rebuilt bundle never looks "changed" when nothing did.
"""
from __future__ import annotations

import hashlib
import io
import os
import zipfile
from typing import Dict, List, Optional, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("pipeline", "jobs")
EMR_DIR = os.path.join(REPO_ROOT, "emr")
BOOTSTRAP_SH = os.path.join(EMR_DIR, "bootstrap.sh")
REQUIREMENTS = os.path.join(EMR_DIR, "requirements-emr.txt")
CONSTRAINTS = os.path.join(EMR_DIR, "constraints-emr.txt")

# 1980-01-01, the earliest time a zip entry can carry: no build-time clock leaks into the bytes.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".so", ".swp", "~")


def bundle_files(root: str = REPO_ROOT) -> List[Tuple[str, str]]:
    """(archive name, local path) of every file that goes into the bundle, sorted by name."""
    out = []
    for pkg in PACKAGES:
        top = os.path.join(root, pkg)
        if not os.path.isfile(os.path.join(top, "__init__.py")):
            raise FileNotFoundError("%s is not a Python package (no __init__.py)" % top)
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")]
            for name in filenames:
                if name.startswith(".") or name.endswith(_SKIP_SUFFIXES):
                    continue
                path = os.path.join(dirpath, name)
                arc = os.path.relpath(path, root).replace(os.sep, "/")
                out.append((arc, path))
    return sorted(out)


def build_bundle_bytes(root: str = REPO_ROOT) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for arc, path in bundle_files(root):
            info = zipfile.ZipInfo(arc, date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16  # rw-r--r--, whatever the local umask was
            info.create_system = 3  # "Unix", so the attributes above mean the same everywhere
            with open(path, "rb") as f:
                zf.writestr(info, f.read(), compresslevel=6)
    return buf.getvalue()


def build_bundle(out_path: str, root: str = REPO_ROOT) -> str:
    """Write the bundle zip to `out_path`; returns its SHA-256."""
    data = build_bundle_bytes(root)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, out_path)
    return hashlib.sha256(data).hexdigest()


def job_scripts(root: str = REPO_ROOT) -> Dict[str, str]:
    """job name -> local path of jobs/<job>.py (the spark-submit entry scripts)."""
    jobs_dir = os.path.join(root, "jobs")
    return {name[:-3]: os.path.join(jobs_dir, name) for name in sorted(os.listdir(jobs_dir))
            if name.endswith(".py") and not name.startswith("_")}


def packaged_bpe_files(root: str = REPO_ROOT) -> List[str]:
    """BPE rank files (*.tiktoken) that the pipeline package carries as package data; they go into
    the bundle like every other file under pipeline/, and bootstrap.sh takes the ranks from there."""
    return [path for arc, path in bundle_files(root) if arc.endswith(".tiktoken")]


def find_bpe_file(explicit: str = "") -> Optional[str]:
    """The local r50k_base rank file: `explicit`, else one the pipeline package carries, else the one
    in TIKTOKEN_CACHE_DIR (tiktoken names cache entries by sha1 of the download URL)."""
    if explicit:
        return explicit
    from pipeline.bpe import R50K_SHA256, R50K_URL

    for path in packaged_bpe_files():
        if sha256_file(path) == R50K_SHA256:
            return path

    cache = os.environ.get("TIKTOKEN_CACHE_DIR")
    if cache:
        path = os.path.join(cache, hashlib.sha1(R50K_URL.encode()).hexdigest())
        if os.path.isfile(path):
            return path
    return None


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
