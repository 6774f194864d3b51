"""The record format of the pre-decoded sample cache (written by cache.py, read by pipeline.py).

    serialize(sample) -> bytes        one decoded sample (tokens, labels, bad flag, video / audio arrays) as npz
    deserialize(bytes) -> sample      back, frames and fbank as float32
    cache_shards(cache, i)            the ArrayRecord shards of annotation file #i: <cache>/<i:03d>/*.array_record
    check_manifest(cache, paths, digests)  refuses a cache made from other annotation files, or from
                                      an earlier version of them (their contents changed since)
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
from typing import List, Optional, Sequence

import numpy as np

MANIFEST = "manifest.json"

log = logging.getLogger(__name__)


def serialize(sample: dict, dtype=np.float16) -> bytes:
    arrays = {"input_ids": sample["input_ids"], "labels": sample["labels"], "bad": np.asarray(sample["bad"])}
    for key in ("video", "audio"):
        if sample[key] is not None:
            arrays[key] = np.asarray(sample[key]).astype(dtype)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def deserialize(record: bytes) -> dict:
    with np.load(io.BytesIO(record)) as z:
        return {"input_ids": z["input_ids"], "labels": z["labels"], "bad": bool(z["bad"]),
                "video": z["video"].astype(np.float32) if "video" in z else None,
                "audio": z["audio"].astype(np.float32) if "audio" in z else None}


def cache_shards(cache: str, source_index: int) -> List[str]:
    shards = sorted(glob.glob(os.path.join(cache, f"{source_index:03d}", "*.array_record")))
    if not shards:
        raise FileNotFoundError(f"cache {cache} has no shards for annotation file #{source_index}")
    return shards


def manifest_mismatch(manifest: dict, source_paths: Sequence[str],
                      digests: Optional[Sequence[Optional[str]]] = None) -> Optional[str]:
    """Why a cache with this manifest does not hold the rows of `source_paths` (None when it does).
    `digests[i]` (the file's sha256; None: not known here) must equal the one recorded when the cache was
    written: same paths, other contents would otherwise train on stale samples."""
    if list(manifest["sources"]) != list(source_paths):
        return f"it was made from {manifest['sources']}, the config names {list(source_paths)}"
    recorded = manifest.get("sha256")
    if recorded is None:  # written before manifests kept digests: cannot tell (check_manifest warns)
        return None
    for i, digest in enumerate(digests or ()):
        if digest is not None and recorded[i] != digest:
            return f"{source_paths[i]} has changed since it was written (sha256 {recorded[i][:12]}... -> {digest[:12]}...)"
    return None


def check_manifest(cache: str, source_paths: Sequence[str], digests: Optional[Sequence[Optional[str]]] = None) -> dict:
    path = os.path.join(cache, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: not a cache written by `vllama-jax cache`")
    with open(path) as f:
        manifest = json.load(f)
    if "sha256" not in manifest:
        log.warning("cache %s was written by an earlier version, which kept no sha256 of the annotation files: "
                    "not checked against their contents (write it again to have them checked)", cache)
    why = manifest_mismatch(manifest, source_paths, digests)
    if why:
        raise ValueError(f"cache {cache} does not match the config: {why}; write it again with `vllama-jax cache`")
    return manifest
