"""The shape of the code: no import cycles (function-level imports included), thin job scripts that
shadow nothing, no sys.path edits. Read from the source with `ast`; nothing is imported."""
import ast
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("pipeline", "jobs", "emr")
MAX_JOB_LINES = 80


def _modules():
    """module name -> path, for every .py file of our packages."""
    out = {}
    for pkg in PACKAGES:
        for dirpath, dirnames, filenames in os.walk(os.path.join(REPO, pkg)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for f in filenames:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, f), REPO)[:-3].split(os.sep)
                    if rel[-1] == "__init__":
                        rel = rel[:-1]
                    out[".".join(rel)] = os.path.join(dirpath, f)
    return out


def _with_parents(name, modules):
    """Importing a.b.c runs a, a.b and a.b.c: every one of them that is ours."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & set(modules)


def import_graph():
    """module -> the set of our modules it imports anywhere in its body (functions included).

    A module's own enclosing packages are left out where only reached on the way to a sibling
    (`from pipeline.sample import vocab` inside pipeline/sample/corpus.py): Python has started them
    before the module itself runs. Names imported from a package's __init__ do count."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        is_pkg = path.endswith("__init__.py")
        mine = _with_parents(name, modules) - {name}
        deps = set()
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            if isinstance(node, ast.Import):
                for a in node.names:
                    deps |= _with_parents(a.name, modules) - mine
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's package, up level-1 more
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module
                deps |= _with_parents(target, modules) - mine
                for a in node.names:
                    if target + "." + a.name in modules:  # `from pkg import module`
                        deps.add(target + "." + a.name)
                    elif target in modules:  # a name defined in `target` itself
                        deps.add(target)
        deps.discard(name)
        graph[name] = deps
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules [a, b, ..., a], or None."""
    state = {}  # 1 = on the current path, 2 = done
    path = []

    def visit(v):
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def test_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"y2"}, "y2": {"y"}}) == ["y", "y2", "y"]


def test_graph_sees_function_level_and_from_imports():
    graph = import_graph()
    # function-level: the CLI imports its commands lazily, through importlib (not seen), but
    # generate imports its benchmark inside main()
    assert "pipeline.gpt.gen_benchmark" in graph["pipeline.gpt.generate"]
    assert "pipeline.ingest.core" in graph["pipeline.ingest.spark_plan"]       # from pipeline.ingest import core
    assert {"pipeline", "pipeline.dedup", "pipeline.dedup.spark_plan"} <= graph["jobs.dedup_job"]  # + packages


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_plain_python_cores_do_not_import_spark():
    """Only the Spark plan modules (and the jobs/stages that call them) may import pyspark."""
    allowed = {"pipeline.spark", "pipeline.stages"}
    offenders = []
    for name, path in _modules().items():
        if not name.startswith("pipeline.") or name in allowed or name.rsplit(".", 1)[-1].startswith("spark_"):
            continue
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(m == "pyspark" or m.startswith("pyspark.") for m in mods):
                offenders.append(name)
    assert offenders == []


def test_job_scripts_are_thin_and_shadow_nothing():
    names = sys.stdlib_module_names if hasattr(sys, "stdlib_module_names") else None
    if names is None:
        pytest.skip("sys.stdlib_module_names needs Python >= 3.10")
    scripts = sorted(f for f in os.listdir(os.path.join(REPO, "jobs")) if f.endswith(".py"))
    assert "run_pipeline.py" in scripts and "tokenize_job.py" in scripts
    for f in scripts:
        # spark-submit puts jobs/ first on sys.path: a script named like a standard module would
        # replace that module for everything the job imports.
        assert f[:-3] not in names, f
        with open(os.path.join(REPO, "jobs", f), encoding="utf-8") as fh:
            assert len(fh.read().splitlines()) < MAX_JOB_LINES, f


def _is_sys_path(node):
    return isinstance(node, ast.Attribute) and node.attr == "path" and \
        isinstance(node.value, ast.Name) and node.value.id == "sys"


def test_no_sys_path_edits():
    """Code finds the package because it is installed (or shipped with --py-files), not by editing
    sys.path: the package itself, the job scripts, benchmarks and tests alike."""
    scripts = {os.path.join(d, f): os.path.join(REPO, d, f) for d in ("bench", "tests")
               for f in os.listdir(os.path.join(REPO, d)) if f.endswith(".py")}
    offenders = []
    for name, path in list(_modules().items()) + list(scripts.items()):
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            edited = []
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                edited = [node.func.value]  # sys.path.insert(...), .append, ...
            elif isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                edited = [t.value if isinstance(t, ast.Subscript) else t for t in targets]
            if any(_is_sys_path(e) for e in edited):
                offenders.append(name)
    assert offenders == []
