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

gxnor writes version 2 (version 3 for the graph of an own network, :mod:`.packed_graph`)
and reads all three.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import atomic_write
from ..discrete.space import ALLOWED_STATES, Space
from ..errors import UserError

MAGIC = b"GXNORPK\x00"
VERSION = 2
READS = (1, 2, 3)  # 3: a graph (own networks), :mod:`.packed_graph`
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


def layer_size(states: int, weights: int) -> dict[str, float]:
    """What one layer of ``weights`` weights of ``states`` states takes at rest in the current
    format: ``bits`` per weight and ``bytes`` of its weight blob (the one definition that
    gxnor eval, gxnor summary and the logged ``bits_per_weight`` use)."""
    return {"bits": weight_bits(states), "bytes": weight_blob_bytes({"shape": [weights], "states": states}, VERSION)}


def weight_entries(manifest: dict) -> list[dict]:
    """The weight entries of a manifest, in order: its layers' (versions 1, 2) or its weighted
    nodes' (version 3)."""
    return [part["weight"] for part in manifest.get("layers") or manifest.get("nodes", []) if "weight" in part]


def packed_weight_bytes(manifest: dict) -> int:
    return sum(weight_blob_bytes(w, manifest["version"]) for w in weight_entries(manifest))


def weight_blob_bytes(weight: dict, version: int) -> int:
    """Bytes of a layer's weight blob: whole uint64 words (version 2) or whole bytes (version 1)."""
    count = math.prod(weight["shape"])
    if version >= 2:
        return 8 * -(-count // per_word(weight["states"]))
    return math.ceil(count * weight["bits"] / 8)


def write(path: Path, manifest: dict[str, Any], blobs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Write manifest + blobs atomically; returns the manifest as written plus its file size."""
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
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise PackedError(f"{path} has a corrupt manifest: {str(err)[:200]}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("blobs", {}), dict):
        raise PackedError(f"{path} has a corrupt manifest: not a table of entries")
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


# -- validation: a manifest must describe a network the engine can run exactly ----------------
def validate(manifest: dict, blobs: dict[str, np.ndarray]) -> None:
    """Refuse a manifest that does not describe a network the engine can run exactly
    (PackedError, one line): every layer's kind, shapes, spaces, bits, blobs and their dtypes
    and shapes must fit the layer before it and the format's rules."""
    if manifest.get("version") == 3:
        raise PackedError("a packed graph (format version 3, an own network): "
                          "gxnor_cli.deploy.graph_engine.load_packed runs it")
    check = _Checker(manifest, blobs)
    try:
        check.input()
        layers = manifest["layers"]
        check.need(isinstance(layers, list) and layers, "manifest", "no layers")
        previous = None  # the output space of the layer before (None: the real input)
        for i, spec in enumerate(layers):
            out_ch = check.weight(f"layer {i}", spec)
            check.geometry(f"layer {i}", spec, out_ch)
            check.layer_input(f"layer {i}", spec["input"], previous)
            previous = check.output(f"layer {i}", spec["output"], out_ch, i == len(layers) - 1)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError, OverflowError) as err:
        raise PackedError(f"invalid packed model: missing or malformed manifest entry ({err!r})") from None


#: What a manifest may claim, checked before anything is allocated: a side of the input or a
#: feature map, the values one sample's input or layer output holds, the values of one
#: sample's convolution patches (what the engine copies).
MAX_SIDE = 4096
MAX_SAMPLE = 1 << 24
MAX_PATCHES = 1 << 26


def whole(value) -> bool:
    """An int of JSON, not a bool (which Python would compare equal to 0 and 1) or a float."""
    return type(value) is int


class _Checker:
    """The checks of :func:`validate`, walking the layers with the shape that flows through."""

    def __init__(self, manifest: dict, blobs: dict[str, np.ndarray]):
        self.manifest, self.blobs = manifest, blobs
        self.channels = self.height = self.width = 0
        self.features = None  # set once a dense layer flattens

    @staticmethod
    def need(ok: bool, where: str, what: str) -> None:
        if not ok:
            raise PackedError(f"invalid packed model: {where}: {what}")

    def blob(self, where: str, name, dtypes: tuple[str, ...], shape: tuple[int, ...]) -> None:
        self.need(isinstance(name, str) and name in self.blobs, where, f"no blob {name!r}")
        array = self.blobs[name]
        self.need(str(array.dtype) in dtypes, where, f"blob {name!r} is {array.dtype}, expected {' or '.join(dtypes)}")
        self.need(tuple(array.shape) == shape, where,
                  f"blob {name!r} has shape {list(array.shape)}, expected {list(shape)}")

    def space(self, where: str, entry) -> Space:
        self.need(isinstance(entry, dict), where, "missing")
        states = entry.get("states")
        self.need(states in ALLOWED_STATES and not isinstance(states, bool), where, f"states {states!r} is not a space")
        sp = Space(states)
        codes = list(range(-sp.max_code, sp.max_code + 1, sp.code_step))
        self.need(entry.get("codes") == codes, where, f"codes do not match {states} states")
        if "bits" in entry:
            self.need(entry["bits"] == sp.bits, where, f"bits {entry['bits']!r} for {states} states (expected {sp.bits})")
        return sp

    def input(self) -> None:
        inp, shape = self.manifest["input"], self.manifest["input"]["shape"]
        self.need(self.manifest.get("format") == "gxnor-packed", "manifest", "format is not gxnor-packed")
        self.need(isinstance(shape, list) and len(shape) == 3 and all(whole(v) and v > 0 for v in shape),
                  "input", f"shape {shape!r} is not [C, H, W]")
        self.need(max(shape[1:]) <= MAX_SIDE and math.prod(shape) <= MAX_SAMPLE, "input",
                  f"shape {shape} is larger than a packed model may claim")
        self.need(whole(inp["max_value"]) and inp["max_value"] > 0, "input",
                  "max_value must be an integer > 0")
        self.channels, self.height, self.width = shape

    def weight(self, where: str, spec: dict) -> int:
        """The weight entry and its blob; returns the output channels."""
        self.need(spec.get("kind") in ("conv", "dense"), where, f"unknown kind {spec.get('kind')!r}")
        w = spec["weight"]
        self.need(isinstance(w["shape"], list) and all(whole(v) and v > 0 for v in w["shape"]), where,
                  f"weight shape {w['shape']!r} is not a list of whole numbers")
        wspace = self.space(f"{where} weight", w)
        count = int(np.prod(w["shape"]))
        if self.manifest["version"] >= 2:
            g = per_word(wspace.states)
            self.need(w.get("per_word") == g, where, f"per_word {w.get('per_word')!r} for {wspace.states} states "
                                                     f"(expected {g})")
            self.blob(f"{where} weight", w["blob"], ("uint64",), (-(-count // g),))
        else:
            self.blob(f"{where} weight", w["blob"], ("uint8",), (-(-count * wspace.bits // 8),))
        return w["shape"][0]

    def geometry(self, where: str, spec: dict, out_ch: int) -> None:
        """The weight shape fits what flows in; the feature maps stay non-empty."""
        shape, pool = spec["weight"]["shape"], spec["pool"]
        self.need(whole(pool) and pool >= 0, where, f"pool {pool!r}")
        if spec["kind"] == "conv":
            k, pad = spec["kernel"], spec["padding"]
            self.need(self.features is None, where, "a convolution after a dense layer")
            self.need(whole(k) and k >= 1 and whole(pad) and 0 <= pad < k, where,
                      f"kernel {k!r} or padding {pad!r} (a padding of k or more adds only zeros)")
            self.need(shape == [out_ch, self.channels, k, k], where,
                      f"weight shape {shape} does not fit {self.channels} input channels and kernel {k}")
            self.height, self.width = self.height + 2 * pad - k + 1, self.width + 2 * pad - k + 1
            self.need(self.height * self.width * self.channels * k * k <= MAX_PATCHES and
                      self.height * self.width * out_ch <= MAX_SAMPLE, where, "feature maps larger than a packed "
                                                                              "model may claim")
            if pool:
                self.height, self.width = self.height // pool, self.width // pool
            self.need(self.height >= 1 and self.width >= 1, where, "feature maps shrink to nothing")
            self.channels = out_ch
        else:
            n_in = self.features if self.features is not None else self.channels * self.height * self.width
            self.need(pool == 0, where, "a dense layer cannot pool")
            self.need(shape == [out_ch, n_in], where, f"weight shape {shape} does not fit {n_in} inputs")
            self.features = out_ch

    def layer_input(self, where: str, x: dict, previous) -> None:
        if previous is None:
            self.need(x.get("kind") == "real" and x.get("max_value") == self.manifest["input"]["max_value"], where,
                      "the first layer must take the real input")
        else:
            self.need(x.get("kind") == "states" and self.space(f"{where} input", x).states == previous.states, where,
                      "its input space is not the previous layer's output space")

    def output(self, where: str, out: dict, out_ch: int, last: bool):
        """The output entry and its blobs; returns its space (None for the last, affine layer)."""
        if out.get("kind") == "affine":
            self.need(last, where, "only the last layer has an affine output")
            self.need(out_ch == self.manifest["classes"], where, f"{out_ch} outputs for {self.manifest['classes']} classes")
            for key in ("scale", "shift"):
                self.blob(f"{where} output", out[key], ("float64", "float32"), (out_ch,))
            return None
        self.need(not last, where, "the last layer must have an affine output")
        self.need(out.get("kind") in ("threshold", "sign"), where, f"unknown output kind {out.get('kind')!r}")
        space = self.space(f"{where} output", out)
        self.need((out["kind"] == "sign") == (space.states == 2), where, "sign output needs 2 states")
        levels = 1 if space.states == 2 else space.max_code
        self.blob(f"{where} output", out["flip"], ("int8",), (out_ch,))
        self.need(np.isin(self.blobs[out["flip"]], (-1, 1)).all(), where, "flip must be -1 or +1")
        self.blob(f"{where} output", out["hi"], ("int32",), (out_ch, levels))
        if out["kind"] == "threshold":
            self.blob(f"{where} output", out["lo"], ("int32",), (out_ch, levels))
        return space
