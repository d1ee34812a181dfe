"""The packed file format: one file, a JSON manifest and bit-packed blobs (numpy only).

Layout (all integers little-endian), documented in docs/packed-format.md:

    bytes 0..7     magic b"GXNORPK\\0"
    bytes 8..11    uint32 format version (VERSION)
    bytes 12..15   uint32 manifest length M
    bytes 16..     M bytes of UTF-8 JSON (the manifest), zero-padded to a multiple of 8
    then           the blobs, each starting at an offset that is a multiple of 8

The manifest's ``blobs`` maps a name to {offset, length, dtype, shape, sha256}; offsets
count from the start of the blob area.  Weight blobs hold unsigned state indices n in
0 .. N-1 (N states):

    version 2  radix-N digits in uint64 words, G = the most with N^G <= 2^64 per word:
               word w = sum_j n[w G + j] N^j   (1.6 bits per ternary weight, log2(3) = 1.585)
    version 1  ``bits`` = ceil(log2 N) bits each, LSB first (value i occupies bits
               i*bits .. i*bits+bits-1 of the little-endian bit stream)

gxnor writes version 2 and reads both.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

MAGIC = b"GXNORPK\x00"
VERSION = 2
READS = (1, 2)
HEADER = struct.Struct("<8sII")
#: The dtypes a blob may have (numbers little-endian, floats IEEE 754).
DTYPES = ("uint8", "int8", "int32", "uint64", "float32", "float64")


class PackedError(UserError):
    """A packed file that is missing, truncated, corrupt or of an unknown version."""


def pack_bits(indices: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ``indices`` (< 2^bits) -> uint8 stream, ``bits`` bits each, LSB first."""
    flat = indices.astype(np.uint16).reshape(-1)
    planes = (flat[:, None] >> np.arange(bits, dtype=np.uint16)) & 1
    return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little")


def unpack_bits(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of pack_bits: ``count`` unsigned values of ``bits`` bits."""
    planes = np.unpackbits(data, bitorder="little", count=count * bits).reshape(count, bits)
    return (planes.astype(np.uint16) << np.arange(bits, dtype=np.uint16)).sum(axis=1, dtype=np.uint16)


def per_word(states: int) -> int:
    """G: how many radix-``states`` digits fit one uint64 word (states^G <= 2^64)."""
    g = 1
    while states ** (g + 1) <= 2**64:
        g += 1
    return g


def pack_radix(indices: np.ndarray, states: int) -> np.ndarray:
    """Unsigned ``indices`` (< states) -> uint64 words of ``per_word(states)`` radix digits each,
    the first index the least significant digit; the last word is filled with zeros."""
    g = per_word(states)
    flat = indices.astype(np.uint64).reshape(-1)
    digits = np.zeros(-(-flat.size // g) * g, dtype=np.uint64)
    digits[:flat.size] = flat
    digits = digits.reshape(-1, g)
    words = np.zeros(digits.shape[0], dtype=np.uint64)
    for j in reversed(range(g)):  # Horner: ((d[g-1] N + d[g-2]) N + ...) N + d[0]
        words = words * np.uint64(states) + digits[:, j]
    return words


def unpack_radix(words: np.ndarray, states: int, count: int) -> np.ndarray:
    """Inverse of pack_radix: ``count`` indices."""
    g, base = per_word(states), np.uint64(states)
    rest = words.astype(np.uint64).copy()
    digits = np.empty((rest.size, g), dtype=np.uint64)
    for j in range(g):
        digits[:, j] = rest % base
        rest //= base
    return digits.reshape(-1)[:count].astype(np.uint16)


def weight_bits(states: int, version: int = VERSION) -> float:
    """Bits one weight of ``states`` states takes at rest in a file of ``version``."""
    return 64 / per_word(states) if version >= 2 else float((states - 1).bit_length())


def write(path: Path, manifest: dict[str, Any], blobs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Write manifest + blobs atomically; returns the manifest as written plus its file size."""
    from .checkpoint import atomic_write

    entries, chunks, offset = {}, [], 0
    for name, array in blobs.items():
        raw = np.ascontiguousarray(array).tobytes()
        entries[name] = {"offset": offset, "length": len(raw), "dtype": str(array.dtype), "shape": list(array.shape),
                         "sha256": hashlib.sha256(raw).hexdigest()}
        pad = (-len(raw)) % 8
        chunks.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    manifest = {**manifest, "blobs": entries}
    text = json.dumps(manifest, separators=(",", ":")).encode()
    text += b"\0" * ((-(HEADER.size + len(text))) % 8)
    body = HEADER.pack(MAGIC, manifest["version"], len(text)) + text + b"".join(chunks)
    atomic_write(Path(path), lambda handle: handle.write(body))
    return {**manifest, "bytes": len(body)}


def read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Manifest and blobs of a packed file; every blob's checksum is verified."""
    path = Path(path)
    if not path.is_file():
        raise PackedError(f"packed model not found: {path}")
    raw = path.read_bytes()
    if len(raw) < HEADER.size:
        raise PackedError(f"{path} is truncated: {len(raw)} bytes, shorter than the header")
    magic, version, length = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise PackedError(f"{path} is not a gxnor packed model (bad magic bytes)")
    if version not in READS:
        raise PackedError(f"{path} has packed format version {version}; this gxnor reads versions "
                          f"{', '.join(map(str, READS))}")
    start = HEADER.size + length
    if len(raw) < start:
        raise PackedError(f"{path} is truncated inside its manifest")
    try:
        manifest = json.loads(raw[HEADER.size:start].rstrip(b"\0"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PackedError(f"{path} has a corrupt manifest: {err}") from None
    if manifest.get("version") != version:
        raise PackedError(f"{path}: manifest version {manifest.get('version')} does not match header {version}")
    blobs, end = {}, start
    try:
        for name, entry in manifest.get("blobs", {}).items():
            lo, hi = start + entry["offset"], start + entry["offset"] + entry["length"]
            if hi > len(raw):
                raise PackedError(f"{path} is truncated: blob {name!r} ends at byte {hi} of {len(raw)}")
            if lo != end:
                raise PackedError(f"{path}: blob {name!r} does not start where the one before ends (padded to 8)")
            chunk = raw[lo:hi]
            if hashlib.sha256(chunk).hexdigest() != entry["sha256"]:
                raise PackedError(f"{path}: checksum mismatch in blob {name!r} (the file is corrupt)")
            if entry["dtype"] not in DTYPES:
                raise PackedError(f"{path}: blob {name!r} has dtype {entry['dtype']!r}; allowed: {', '.join(DTYPES)}")
            blobs[name] = np.frombuffer(chunk, dtype=np.dtype(entry["dtype"]).newbyteorder("<")).reshape(entry["shape"])
            end = hi + (-(hi - start) % 8)
            if any(raw[hi:end]):
                raise PackedError(f"{path}: non-zero padding after blob {name!r}")
    except (KeyError, TypeError, ValueError) as err:
        raise PackedError(f"{path} has a malformed blob table: {err!r}") from None
    if len(raw) != end:
        raise PackedError(f"{path} has {len(raw) - end} trailing bytes after its last blob")
    return manifest, blobs
