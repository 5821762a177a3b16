"""The input and output names of an ONNX file, read from its protobuf wire format.

`load_bundle` checks them against the manifest for every model it loads. The `onnx` package
would parse the same (and does, in the tests that pin this against it), but importing it costs
0.7-1.4 s on the 2-core machine of docs/results.md §6, paid by every `hagview` and
`hagview-annotate` start and every `--jobs` worker; this reads the few fields needed in
milliseconds (the weights are skipped over, not parsed).

Fields read (onnx.proto): ModelProto.graph = 7; GraphProto.initializer = 5 (TensorProto.name = 8),
.input = 11, .output = 12 (ValueInfoProto.name = 1), .sparse_initializer = 15
(SparseTensorProto.values = 1, a TensorProto).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

_LEN, _VARINT, _FIXED64, _FIXED32 = 2, 0, 1, 5


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(buf: memoryview) -> Iterator[tuple[int, memoryview]]:
    """(field number, bytes) of each length-delimited field of one message; others skipped."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, kind = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if kind == _VARINT:
            _, pos = _varint(buf, pos)
        elif kind == _FIXED64:
            pos += 8
        elif kind == _FIXED32:
            pos += 4
        elif kind == _LEN:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise ValueError("a field runs past the end of its message")
            yield number, buf[pos:pos + length]
            pos += length
        else:
            raise ValueError(f"wire type {kind} (not used by ONNX)")
    if pos > end:
        raise ValueError("truncated message")


def _string(buf: memoryview, field: int) -> str:
    for number, value in _fields(buf):
        if number == field:
            return bytes(value).decode("utf-8")
    return ""


def io_names(path: str | Path) -> tuple[list[str], list[str]]:
    """(graph inputs that are not initialisers, graph outputs) of the ONNX file at `path`.
    ValueError when the file is not a serialised ONNX model with a graph."""
    view = memoryview(Path(path).read_bytes())
    if len(view) == 0:
        raise ValueError("empty file")
    graph = next((value for number, value in _fields(view) if number == 7), None)
    if graph is None:
        raise ValueError("no graph in the file")
    inputs, outputs, initialisers = [], [], set()
    for number, value in _fields(graph):
        if number == 11:
            inputs.append(_string(value, 1))
        elif number == 12:
            outputs.append(_string(value, 1))
        elif number == 5:
            initialisers.add(_string(value, 8))
        elif number == 15:
            values = next((v for n, v in _fields(value) if n == 1), None)
            if values is not None:
                initialisers.add(_string(values, 8))
    return [name for name in inputs if name not in initialisers], outputs
