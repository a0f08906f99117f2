"""The Python worker daemon of local Spark sessions: pyspark's own daemon, except that

- the start of a task does not re-read the archives on the workers' path, and
- the modules every Arrow-based Python operator needs are imported once, before the workers fork,
  and the objects they made are frozen out of the garbage collector's reach.

pyspark's worker calls `importlib.invalidate_caches()` at the start of every task, so that files
added with `addPyFile` are found. From Python 3.10 that makes every zip importer on `sys.path` re-read
its archive's whole directory in pure Python, and Spark puts three archives on the workers' path:
pyspark.zip, py4j's zip and spark-core's jar (5,219 entries), each read again by the importer of every
package imported from it. Each Python task paid about 75 ms of CPU for it before doing any work: 15
tasks of a 100k-document dedup job, about 90 at 1M (docs/benchmarks/dedup.md). Those archives do not
change while the application runs, so the importers of the archives on the path when the daemon
starts keep the directory they read first. Archives added later (`addPyFile`) get ordinary
importers, which the worker's call refreshes as before.

A new worker then imports pyspark's Arrow serializers, pandas, pyarrow and numpy: about 0.45 CPU-s
each time, and Spark stops a worker left idle for a minute and starts another when work comes back.
Imported in the daemon, every forked worker has them. Importing starts no thread that a fork
would break: pyarrow makes its thread pools on first use and remakes them after a fork, and
OpenBLAS, under numpy, stops its threads before a fork (the same holds under `multiprocessing`'s
fork start method).

pyspark's worker runs a full `gc.collect()` after every task it serves, and with those modules loaded
each one walks about 68,000 objects: 28 ms of CPU in a fresh process, and in a py-spy profile of a
100k-document dedup job 5.6% of its Python workers' samples (about 1.5 CPU-s over 15 tasks).
`gc.freeze()` just before the first fork moves them to the collector's permanent generation, which
the workers inherit: their collections walk only what the tasks made (0.04 ms in a worker after a
signature task), and the modules' pages stay shared with the daemon instead of being copied when a
collection touches their objects.

`pipeline.spark.get_spark` starts local sessions with `spark.python.daemon.module` set to this
module; clusters keep pyspark's daemon (EMR's Python 3.9 has no such re-read).
"""
from __future__ import annotations

import gc
import importlib
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
    archives = {}
    for entry in path:
        try:
            archives[entry] = ArchiveImporter(entry)
        except (zipimport.ZipImportError, OSError, TypeError):
            continue  # a directory, a missing file, or not a zip archive
    if not archives:
        return []

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
    sys.path_importer_cache.update(archives)
    return list(archives)


# What every Arrow-based Python operator imports in a new worker (module docstring).
PRELOADED_MODULES = ("numpy", "pyarrow", "pyarrow.compute", "pandas", "pyspark.sql.pandas.serializers")


def preload(modules: Iterable[str]) -> List[str]:
    """Import `modules` (those that are installed); returns the ones imported."""
    loaded = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        loaded.append(name)
    return loaded


if __name__ == "__main__":
    pin_archives(list(sys.path))
    preload(PRELOADED_MODULES)
    from pyspark.daemon import manager
    gc.freeze()
    manager()
