"""Job configs: one frozen dataclass per job, built from the CLI and saved next to its output.

A config class declares its CLI flags in its field metadata, so the dataclass is the single source of
truth for names, defaults and help text:

    @dataclass(frozen=True)
    class DedupConfig(JobConfig):
        input: str = field(metadata=flag("--input", required=True, help="ingest output dir"))
        threshold: float = field(default=0.8, metadata=flag("--threshold", help="Jaccard threshold"))

`DedupConfig.add_arguments(parser)` registers the flags and `DedupConfig.from_args(ns)` builds the
frozen config. `save_config(cfg, out_dir)` writes `out_dir/_config.json`; the leading underscore makes
Spark's parquet reader skip it, so it can live inside the output directory it describes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, Dict, Optional, Sequence, Type, TypeVar

from pipeline import __version__, storage

T = TypeVar("T", bound="JobConfig")

CONFIG_FILE = "_config.json"


def flag(*names: str, **argparse_kwargs: Any) -> Dict[str, Any]:
    """Field metadata declaring the CLI flag(s) of a config field."""
    return {"flags": names, "argparse": argparse_kwargs}


@dataclasses.dataclass(frozen=True)
class JobConfig:
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
        for f in dataclasses.fields(cls):
            if "flags" not in f.metadata or f.name in skip:
                continue
            kwargs = dict(f.metadata["argparse"])
            kwargs.setdefault("dest", f.name)
            if f.type in ("bool", bool) and "action" not in kwargs:
                # bool fields: --flag / --no-flag
                kwargs["action"] = argparse.BooleanOptionalAction
            if f.default is not dataclasses.MISSING and "default" not in kwargs:
                kwargs["default"] = f.default
                if kwargs.get("help"):
                    kwargs["help"] += " (default: %(default)s)"
            elif f.default_factory is not dataclasses.MISSING and "default" not in kwargs:  # type: ignore
                kwargs["default"] = f.default_factory()  # type: ignore
            parser.add_argument(*f.metadata["flags"], **kwargs)

    @classmethod
    def from_args(cls: Type[T], ns: argparse.Namespace, **overrides: Any) -> T:
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in overrides:
                values[f.name] = overrides[f.name]
            elif hasattr(ns, f.name):
                v = getattr(ns, f.name)
                values[f.name] = tuple(v) if isinstance(v, list) else v
        return cls(**values)

    @classmethod
    def from_argv(cls: Type[T], argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> T:
        parser = argparse.ArgumentParser(prog=prog, description=cls.__doc__)
        cls.add_arguments(parser)
        return cls.from_args(parser.parse_args(argv))

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def save_config(cfg: JobConfig, out_dir: str, resolved: Optional[Dict[str, Any]] = None,
                spark: Optional[JobConfig] = None) -> str:
    """Write `out_dir/_config.json` describing how this output was made; returns the path.

    `resolved` records what the job chose at run time where the config left it open (ingest's
    `extractor=auto` becomes the extractor that ran); `spark` records how its SparkSession was started
    (pipeline.spark.SparkOptions), under "spark"."""
    doc = {
        "job": type(cfg).__name__,
        "pipeline_version": __version__,
        "python": sys.version.split()[0],
        "config": cfg.to_dict(),
    }
    if resolved:
        doc["resolved"] = dict(resolved)
    if spark is not None:
        doc["spark"] = spark.to_dict()
    path = storage.join(out_dir, CONFIG_FILE)
    storage.write_text(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path
