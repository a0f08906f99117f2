"""`pipeline check-shards`: validate llm.c token shards (local or s3://) and compare them with the
`_manifest.json` the shards stage writes next to them."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, Optional, Sequence

from pipeline import storage
from pipeline.bpe import GPT2_VOCAB_SIZE
from pipeline.shards.llmc import MANIFEST, ShardError, check_shard


def _manifest_entries(paths: Sequence[str]) -> Dict[str, dict]:
    """Manifest entries (by shard path) from any `_manifest.json` next to the given shards."""
    out: Dict[str, dict] = {}
    for d in sorted({p.rsplit("/", 1)[0] if "/" in p else "" for p in paths}):
        mpath = storage.join(d, MANIFEST)
        if not storage.exists(mpath):
            continue
        for entry in json.loads(storage.read_text(mpath)).get("shards", []):
            out[storage.join(d, entry["name"])] = entry
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pipeline check-shards",
        description="Validate llm.c token shards: magic, version, exact file size, token ids < vocab; "
                    "also sha256/token counts against a _manifest.json next to them, if present.")
    parser.add_argument("paths", nargs="+", help="shard files, directories or globs (local or s3://)")
    parser.add_argument("--vocab-size", type=int, default=GPT2_VOCAB_SIZE,
                        help="token ids must be below this (default: %(default)s, GPT-2)")
    ns = parser.parse_args(argv)
    try:
        paths = storage.list_files(ns.paths, suffixes=(".bin",))
    except storage.InputError as e:
        print("check-shards: %s" % e, file=sys.stderr)
        return 1
    manifest = _manifest_entries(paths)
    width = max(len(p) for p in paths)
    print("%s  %13s  %10s  %s" % ("shard".ljust(width), "tokens", "EOT", "status"))
    problems, total, total_eot = 0, 0, 0
    for path in paths:
        try:
            info = check_shard(path, ns.vocab_size)
            entry = manifest.get(path)
            if entry is not None and (entry["sha256"] != info["sha256"] or entry["n_tokens"] != info["n_tokens"]):
                raise ShardError("%s: contents differ from %s (sha256/token count)" % (path, MANIFEST))
        except (ShardError, storage.InputError, OSError) as e:
            problems += 1
            print("%s  %13s  %10s  FAIL" % (path.ljust(width), "-", "-"))
            print("check-shards: %s" % e, file=sys.stderr)
            continue
        total += info["n_tokens"]
        total_eot += info["n_eot"]
        print("%s  %13d  %10d  ok%s" % (path.ljust(width), info["n_tokens"], info["n_eot"],
                                        " (manifest)" if path in manifest else ""))
    print("%d shard(s), %d tokens, %d EOT, %d problem(s)" % (len(paths), total, total_eot, problems))
    return 1 if problems else 0
