"""The local Python worker daemon (pipeline.spark_daemon): archives on the workers' path keep the
directory they read across tasks, the Arrow modules are imported and frozen out of the garbage
collector before the workers fork, everything else imports as before."""
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import zipfile
import zipimport

import pytest

from pipeline.spark_daemon import PRELOADED_MODULES, ArchiveImporter, pin_archives, preload


def _zip(path, files):
    with zipfile.ZipFile(path, "w") as z:
        for name, body in files.items():
            z.writestr(name, body)
    return str(path)


@pytest.fixture
def clean_import_state():
    hooks, cache, modules = list(sys.path_hooks), dict(sys.path_importer_cache), set(sys.modules)
    yield
    sys.path_hooks[:] = hooks
    sys.path_importer_cache.clear()
    sys.path_importer_cache.update(cache)
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def _import_from(entry, name):
    """Import top-level package `name` from path entry `entry` the way sys.path would (through
    sys.path_hooks and sys.path_importer_cache), without putting `entry` on sys.path."""
    spec = importlib.machinery.PathFinder.find_spec(name, [entry])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_pinned_archive_and_its_packages_import_and_keep_their_directory(tmp_path, clean_import_state):
    archive = _zip(tmp_path / "lib.zip", {"pinpkg/__init__.py": "", "pinpkg/sub/__init__.py": "",
                                          "pinpkg/sub/mod.py": "VALUE = 41\n"})
    other = _zip(tmp_path / "later.zip", {"laterpkg/__init__.py": "VALUE = 1\n"})
    assert pin_archives([str(tmp_path), archive, str(tmp_path / "missing.zip")]) == [archive]
    _import_from(archive, "pinpkg")
    assert importlib.import_module("pinpkg.sub.mod").VALUE == 41
    inside = {k: v for k, v in sys.path_importer_cache.items() if k == archive or k.startswith(archive + os.sep)}
    assert os.path.join(archive, "pinpkg", "sub") in inside  # the subpackage's own importer
    assert all(isinstance(v, ArchiveImporter) for v in inside.values())

    # invalidate_caches leaves the pinned directory as read; an unpinned archive is still re-read
    # (Python >= 3.10), which is the cost the daemon removes.
    assert _import_from(other, "laterpkg").VALUE == 1
    assert not isinstance(sys.path_importer_cache[other], ArchiveImporter)
    directories = dict(zipimport._zip_directory_cache)
    importlib.invalidate_caches()
    assert zipimport._zip_directory_cache[archive] is directories[archive]
    if sys.version_info >= (3, 10):
        assert zipimport._zip_directory_cache[other] is not directories[other]


def test_local_workers_do_not_reread_sparks_archives_per_task(spark):
    def worker_archives(_):
        # In a Python worker (defined here, so that it is pickled by value): each archive on its
        # path, and whether invalidate_caches re-read its directory.
        before = dict(zipimport._zip_directory_cache)
        importlib.invalidate_caches()
        yield from [(k, zipimport._zip_directory_cache.get(k) is not v) for k, v in before.items() if k in sys.path]

    reread = spark.sparkContext.parallelize(range(4), 4).mapPartitions(worker_archives).collect()
    names = {os.path.basename(path) for path, _ in reread}
    assert "pyspark.zip" in names  # the archives Spark puts on the workers' path are there...
    assert not any(was_reread for _, was_reread in reread)  # ...and kept across tasks


def test_archive_added_while_running_imports_in_workers(spark, tmp_path):
    archive = _zip(tmp_path / "added_while_running.zip", {"added_while_running.py": "def f(x):\n    return x * 3\n"})
    spark.sparkContext.addPyFile(archive)

    def use(rows):
        import added_while_running
        for x in rows:
            yield added_while_running.f(x)

    assert sorted(spark.sparkContext.parallelize([1, 2, 3], 3).mapPartitions(use).collect()) == [3, 6, 9]


def test_local_workers_start_with_the_arrow_modules_imported(spark):
    wanted = [m for m in PRELOADED_MODULES if importlib.util.find_spec(m.split(".")[0])]
    assert {"numpy", "pyarrow", "pyspark.sql.pandas.serializers"} <= set(wanted)

    def imported(_):
        # An RDD task: nothing on its way imports pandas or pyarrow, so what is there came from the daemon.
        yield from [(m, m in sys.modules) for m in wanted]

    seen = spark.sparkContext.parallelize(range(2), 2).mapPartitions(imported).collect()
    assert seen and all(there for _, there in seen)
    assert preload(["json", "no_such_module_anywhere"]) == ["json"]


def test_local_workers_leave_the_preloaded_objects_to_the_frozen_generation(spark):
    def collector_state(_):
        # pyspark's worker runs gc.collect() after every task; what the daemon imported before the
        # fork is frozen (gc.freeze), so those collections no longer walk it.
        import gc
        yield gc.get_freeze_count(), len(gc.get_objects())

    states = spark.sparkContext.parallelize(range(2), 2).mapPartitions(collector_state).collect()
    assert states
    for frozen, collected in states:
        # numpy, pyarrow and pandas alone make tens of thousands of tracked objects.
        assert frozen > 20000 and frozen > collected
