"""The few ONNX messages the compiled kernel needs, written as protobuf bytes by hand.

Importing the ``onnx`` package costs about 0.8 s, four times onnxruntime's own import; the
runtime needs only to *write* a small graph, so it encodes these messages itself
(field numbers from onnx.proto, IR version 8, opset 17):

    ModelProto        1 ir_version, 2 producer_name, 7 graph, 8 opset_import
    OperatorSetIdProto 1 domain, 2 version
    GraphProto        1 node, 2 name, 5 initializer, 11 input, 12 output
    NodeProto         1 input, 2 output, 4 op_type, 5 attribute
    AttributeProto    1 name, 2 f, 3 i, 8 ints, 20 type (FLOAT 1, INT 2, INTS 7)
    TensorProto       1 dims, 2 data_type, 8 name, 9 raw_data (little-endian)
    ValueInfoProto    1 name, 2 type -> TypeProto 1 tensor_type -> 1 elem_type, 2 shape
    TensorShapeProto  1 dim -> Dimension 1 dim_value, 2 dim_param

Wire format: a key varint (field << 3 | wire type: 0 varint, 2 length-delimited, 5 32-bit),
then the value; repeated scalars are written one key per element (what proto2 does).
"""

from __future__ import annotations

import struct

import numpy as np

IR_VERSION, OPSET = 8, 17
DATA_TYPES = {np.dtype(np.float32): 1, np.dtype(np.uint8): 2, np.dtype(np.int8): 3, np.dtype(np.int32): 6,
              np.dtype(np.int64): 7, np.dtype(np.float64): 11}
FLOAT, UINT8, DOUBLE = 1, 2, 11


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64: ten bytes of two's complement
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, value) -> bytes:
    """One field: int -> varint, float -> 32-bit, str / bytes -> length-delimited."""
    if isinstance(value, bool) or isinstance(value, (int, np.integer)):
        return varint(number << 3) + varint(int(value))
    if isinstance(value, float):
        return varint(number << 3 | 5) + struct.pack("<f", value)
    data = value.encode() if isinstance(value, str) else bytes(value)
    return varint(number << 3 | 2) + varint(len(data)) + data


def attribute(name: str, value) -> bytes:
    if isinstance(value, (list, tuple)):
        return field(1, name) + b"".join(field(8, int(v)) for v in value) + field(20, 7)
    if isinstance(value, float):
        return field(1, name) + field(2, value) + field(20, 1)
    return field(1, name) + field(3, int(value)) + field(20, 2)


def node(op: str, inputs, outputs, **attrs) -> bytes:
    return (b"".join(field(1, i) for i in inputs) + b"".join(field(2, o) for o in outputs) + field(4, op)
            + b"".join(field(5, attribute(k, v)) for k, v in attrs.items()))


def tensor(name: str, array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array)
    return (b"".join(field(1, d) for d in array.shape) + field(2, DATA_TYPES[array.dtype]) + field(8, name)
            + field(9, array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()))


def value_info(name: str, elem_type: int, shape) -> bytes:
    dims = b"".join(field(1, field(2, d) if isinstance(d, str) else field(1, d)) for d in shape)
    return field(1, name) + field(2, field(1, field(1, elem_type) + field(2, dims)))


def model(nodes: list[bytes], initializers: list[bytes], inputs: list[bytes], outputs: list[bytes],
          name: str, producer: str = "gxnor") -> bytes:
    graph = (b"".join(field(1, n) for n in nodes) + field(2, name) + b"".join(field(5, t) for t in initializers)
             + b"".join(field(11, i) for i in inputs) + b"".join(field(12, o) for o in outputs))
    return (field(1, IR_VERSION) + field(2, producer) + field(7, graph)
            + field(8, field(1, "") + field(2, OPSET)))
