"""The Python worker daemon of local Spark sessions: pyspark's own daemon, except that the start of a
task does not re-read the archives on the workers' path.

pyspark's worker calls `importlib.invalidate_caches()` at the start of every task, so that files
added with `addPyFile` are found. From Python 3.10 that makes every zip importer on `sys.path` re-read
its archive's whole directory in pure Python, and Spark puts three archives on the workers' path:
pyspark.zip, py4j's zip and spark-core's jar (5,219 entries). Each Python task paid about 74 ms of
CPU for it before doing any work: about 1.1 CPU-s of a 100k-document dedup job, 7 at 1M
(docs/benchmarks/dedup.md). Those archives do not change while the application runs, so the
importers of the archives on the path when the daemon starts keep the directory they read first.
Archives added later (`addPyFile`) get ordinary importers, which the worker's call refreshes as
before.

`pipeline.spark.get_spark` starts local sessions with `spark.python.daemon.module` set to this
module; clusters keep pyspark's daemon (EMR's Python 3.9 has no such re-read).
"""
from __future__ import annotations

import os
import sys
import zipimport
from typing import Iterable, List


class ArchiveImporter(zipimport.zipimporter):
    """A zip importer that keeps the directory it read: the archive does not change while the
    application runs."""

    def invalidate_caches(self) -> None:
        pass


def pin_archives(path: Iterable[str]) -> List[str]:
    """Make every importer of the zip archives among `path`'s entries an ArchiveImporter: those of
    the entries themselves and those of the packages inside them (`pyspark.zip/pyspark/sql`: each
    keeps its own copy of the archive's directory), made now or later. Returns the archives; other
    entries, and archives added to the path later, keep the import system's own importers."""
    archives = []
    for entry in path:
        try:
            ArchiveImporter(entry)
        except (zipimport.ZipImportError, OSError, TypeError):
            continue  # a directory, a missing file, or not a zip archive
        archives.append(entry)
    if not archives:
        return archives

    def inside(entry: str) -> bool:
        return any(entry == archive or entry.startswith(archive + os.sep) for archive in archives)

    def archive_hook(entry: str) -> ArchiveImporter:
        if not inside(entry):
            raise ImportError("not in a pinned archive", path=entry)
        return ArchiveImporter(entry)

    # Path hooks make the importers of new path entries; zipimport's own hook comes first by default.
    sys.path_hooks.insert(0, archive_hook)
    for entry, importer in list(sys.path_importer_cache.items()):
        if inside(entry) and not isinstance(importer, ArchiveImporter):
            sys.path_importer_cache[entry] = ArchiveImporter(entry)
    for entry in archives:
        sys.path_importer_cache[entry] = ArchiveImporter(entry)
    return archives


if __name__ == "__main__":
    pin_archives(list(sys.path))
    from pyspark.daemon import manager
    manager()
