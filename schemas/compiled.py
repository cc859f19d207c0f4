"""Avro binary encoders and decoders compiled from a schema into straight-line
Python: the same bytes as fastavro's ``schemaless_writer`` and the same values as
its ``schemaless_reader``, for the shapes tripwire writes. In a loop a decision
encodes ~1.9 times as fast and a card payment decodes 1.6-1.9 times as fast; in a
live worker, with cold caches, the encodes cost ~28 % less and the decodes ~24 %
(docs/performance.md, thirteenth session).

fastavro walks the schema for every value: it looks each field's type up, and
chooses a union's branch by validating the value against each branch in turn. A
compiled encoder has made those choices once: its code is the schema's fields in
order, and a union's branch follows from the value's exact Python type. A
compiled decoder is the fields' reads in order, a varint of one byte read inline.

Each takes only the plainest case, and raises on anything else; the caller
(:class:`tripwire.schemas.codec.AvroCodec`) then encodes or decodes with fastavro:

* encoders take ``dict`` records with every field and no other key, ``list``
  arrays, ``dict`` maps with ``str`` keys, and ``None``, ``bool``, ``int``,
  ``float``, ``str`` and ``bytes`` where the schema has them; not a field left to
  its default, an extra key, an int beyond a long, a tuple for an array, a value
  of another type (:class:`Unfit`);
* decoders take well-formed bodies in the plainest encoding; not a negative block
  count, a varint beyond 64 bits, a boolean byte other than 0 or 1, a truncated
  or corrupt body.

So no value is written or read differently from fastavro, and every refusal,
error message and quarantine reason stays fastavro's
(``tests/unit/test_compiled_avro.py`` checks both against fastavro, corrupt
bodies included).

A schema it does not compile (a recursive type, ``float``, ``fixed``, a union
whose branch the value's type alone does not settle) has no compiled encoder or
decoder: :func:`compile_writer` and :func:`compile_reader` return None.

>>> encode = compile_writer({"type": "record", "name": "R", "fields": [
...     {"name": "n", "type": ["null", "long"]}]})
>>> encode({"n": 3})
b'\\x02\\x06'
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

__all__ = ["Unfit", "compile_reader", "compile_writer", "zigzag"]

RANGES = {"int": (-(1 << 31), (1 << 31) - 1), "long": (-(1 << 63), (1 << 63) - 1)}
_ONE_BYTE = tuple(bytes([i]) for i in range(128))
KEPT = 4096  # a map's encoded keys (feature names) or string values (provenance) kept


class Unfit(Exception):
    """A value (or body) the compiled code does not take: fastavro's, then."""


class _Unsupported(Exception):
    """A schema the compiler does not take."""


def zigzag(n: int) -> bytes:
    """An Avro int or long: zig-zag, then a varint."""
    n = (n << 1) ^ (n >> 63)
    if n < 128:
        return _ONE_BYTE[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _kept(known: dict[Any, bytes], s: Any) -> bytes:
    """A string's encoding (a map's key or string value), kept for the next time;
    begun again when full."""
    if type(s) is not str:
        raise Unfit
    b = s.encode()
    encoded = zigzag(len(b)) + b
    if len(known) >= KEPT:
        known.clear()
    known[s] = encoded
    return encoded


def _long_at(d: bytes, p: int) -> tuple[int, int]:
    """A varint of two to ten bytes from ``p`` (a long's most), and where it ends;
    Unfit beyond 64 bits (fastavro wraps those around: it decides them)."""
    b = d[p]
    n, shift, p = b & 0x7F, 7, p + 1
    while b & 0x80:
        if shift > 63:
            raise Unfit
        b = d[p]
        n |= (b & 0x7F) << shift
        shift, p = shift + 7, p + 1
    if n >> 64:
        raise Unfit
    return (n >> 1) ^ -(n & 1), p


def compile_reader(schema: Any) -> Callable[[bytes, int], tuple[Any, int]] | None:
    """A decoder of the body of ``schema``'s values from ``data`` at ``start``
    (logical types stripped): (the value, where it ended). It raises (Unfit,
    IndexError...) on anything but a well-formed body in the plainest encoding
    (no negative block counts, no varint beyond 64 bits, booleans 0 or 1);
    then fastavro decides, its value or its error. None for a schema it does not
    compile."""
    gen = _ReaderGenerator()
    try:
        top = gen.function(schema, "")
    except _Unsupported:
        return None
    scope: dict[str, Any] = {"Unfit": Unfit, "long_at": _long_at,
                             "unpack_d": struct.Struct("<d").unpack_from, **gen.constants}
    exec(compile("\n".join(gen.lines), f"<avro decoder {gen.title}>", "exec"),  # ours
         scope)
    decode: Callable[[bytes, int], tuple[Any, int]] = scope[top]
    return decode


def compile_writer(schema: Any) -> Callable[[Any], bytes] | None:
    """An encoder of the body of ``schema``'s values (logical types stripped, as
    the codec writes them), raising :class:`Unfit` (or any error) for a value it
    does not take; None for a schema it does not compile."""
    gen = _WriterGenerator()
    try:
        top = gen.function(schema, "")
    except _Unsupported:
        return None
    source = "\n".join(gen.lines) + f"""
def encode(v):
    parts = []
    {top}(v, parts.append)
    return b"".join(parts)
"""
    scope: dict[str, Any] = {"Unfit": Unfit, "NoneType": type(None), "zz": zigzag,
                             "ONE": _ONE_BYTE, "kept": _kept,
                             "pack_d": struct.Struct("<d").pack, **gen.constants}
    exec(compile(source, f"<avro encoder {gen.title}>", "exec"), scope)  # the source is ours
    encode: Callable[[Any], bytes] = scope["encode"]
    return encode


class _Names:
    """Python source for one schema: a function per named record (and the top
    level), every other type inlined into the code of its parent; the named types
    and constants it refers to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}
        self.named: dict[str, Any] = {}  # full and short name → (kind, schema, namespace)
        self.functions: dict[str, str] = {}  # a record's full name → its function
        self.title = ""

    def constant(self, value: Any) -> str:
        name = f"C{len(self.constants)}"
        self.constants[name] = value
        return name

    def record_function(self, schema: Any, namespace: str) -> str:
        """The function of the record ``schema`` (made and named the first time)."""
        full = self.full_name(schema, namespace)
        if full in self.functions:
            return self.functions[full]
        name = self.function(schema, namespace)
        short = full.rpartition(".")[2]
        self.named[full] = self.named[short] = ("record", schema, namespace)
        return name

    def function(self, schema: Any, namespace: str) -> str:
        raise NotImplementedError

    @staticmethod
    def full_name(schema: dict[str, Any], namespace: str) -> str:
        name = str(schema["name"])
        if "." in name:
            return name
        space = schema.get("namespace", namespace)
        return f"{space}.{name}" if space else name

    def resolve(self, schema: Any, namespace: str) -> tuple[str, Any, str]:
        """(the Avro type: "long", "record", "union"…, its schema, its namespace);
        a named type's definition is noted and references to it are followed."""
        if isinstance(schema, list):
            return "union", schema, namespace
        if isinstance(schema, str):
            if schema in _PRIMITIVE:
                return schema, schema, namespace
            full = schema if "." in schema or not namespace else f"{namespace}.{schema}"
            for candidate in (full, schema):
                if candidate in self.named:
                    return self.named[candidate]
            raise _Unsupported(f"unknown or recursive type {schema}")
        if not isinstance(schema, dict) or "logicalType" in schema:
            raise _Unsupported(repr(schema))  # logical types are stripped before encoding
        kind = schema.get("type")
        if kind in _PRIMITIVE:
            return kind, kind, namespace
        if kind in ("array", "map"):
            return kind, schema, namespace
        if kind in ("record", "error", "enum"):
            full = self.full_name(schema, namespace)
            known = self.named.get(full)
            if known is not None and known[1] is schema:
                return known  # this definition, again
            short = full.rpartition(".")[2]
            if full in self.named or short in self.named:
                raise _Unsupported(f"a second type named {short}")
            kind = "enum" if kind == "enum" else "record"
            if kind == "enum":  # a record is named once its fields are compiled
                self.named[full] = self.named[short] = (kind, schema, namespace)
            return kind, schema, namespace
        raise _Unsupported(f"type {kind}")


class _WriterGenerator(_Names):
    """An encoder's source: ``f(v, ap)`` writes ``v`` through ``ap`` (append)."""

    def function(self, schema: Any, namespace: str) -> str:
        """The name of a function ``f(v, ap)`` writing ``schema``'s values."""
        kind, schema, namespace = self.resolve(schema, namespace)
        if kind == "record":  # once each: through record_function, but for the top
            full = self.full_name(schema, namespace)
            self.title = self.title or full
            name = self.functions[full] = f"w{len(self.functions)}"
            inner = full.rpartition(".")[0]
            fields = schema["fields"]
            body = [f"def {name}(v, ap):",
                    f"    if type(v) is not dict or len(v) != {len(fields)}:",
                    "        raise Unfit  # a default to fill in, or a key too many: fastavro"]
            for f in fields:
                body.append(f"    x0 = v[{f['name']!r}]")
                body += self.value(f["type"], inner, "x0", 1)
            self.lines += [*body, ""]
            return name
        name = f"w{len(self.functions)}"
        self.functions[f"#{name}"] = name
        self.lines += [f"def {name}(v, ap):", *self.value(schema, namespace, "v", 1), ""]
        return name

    def value(self, schema: Any, namespace: str, x: str, depth: int,
              known: bool = False) -> list[str]:
        """Lines writing the value in variable ``x``, indented ``depth`` levels
        (``known``: a union's branch, its Python type checked already)."""
        kind, schema, namespace = self.resolve(schema, namespace)
        pad = "    " * depth
        if kind == "union":
            return self.union(schema, namespace, x, depth)
        if kind == "record":
            return [f"{pad}{self.record_function(schema, namespace)}({x}, ap)"]
        if kind == "enum":
            symbols = self.constant({s: zigzag(i) for i, s in enumerate(schema["symbols"])})
            return [f"{pad}b = {symbols}.get({x}) if type({x}) is str else None",
                    f"{pad}if b is None:", f"{pad}    raise Unfit", f"{pad}ap(b)"]
        if kind in ("array", "map"):
            y = f"x{depth}"
            check = "list" if kind == "array" else "dict"
            lines = [f"{pad}if type({x}) is not {check}:", f"{pad}    raise Unfit",
                     f"{pad}if {x}:", f"{pad}    ap(zz(len({x})))"]
            if kind == "array":
                lines.append(f"{pad}    for {y} in {x}:")
                item = schema["items"]
            else:
                keys = self.constant({})
                lines += [f"{pad}    for k, {y} in {x}.items():",
                          f"{pad}        b = {keys}.get(k)",
                          f"{pad}        ap(kept({keys}, k) if b is None else b)"]
                item = schema["values"]
                if item == "string":  # the same few values again and again (provenance)
                    values = self.constant({})
                    return [*lines, f"{pad}        b = {values}.get({y})",
                            f"{pad}        ap(kept({values}, {y}) if b is None else b)",
                            f"{pad}ap(b'\\x00')"]
            return [*lines, *self.value(item, namespace, y, depth + 2), f"{pad}ap(b'\\x00')"]
        if known and kind in _KNOWN:
            return [pad + line for line in _KNOWN[kind](x)]
        return [pad + line for line in _PRIMITIVE[kind](x)]

    def union(self, branches: list[Any], namespace: str, x: str, depth: int) -> list[str]:
        """A branch by the value's exact type, the one fastavro's first valid branch
        would be; a union where that takes more than the type is not compiled."""
        resolved = [self.resolve(b, namespace) for b in branches]
        kinds = [k for k, _, _ in resolved]
        if "union" in kinds:  # float and fixed are refused by resolve already
            raise _Unsupported("a union in a union")
        if "string" in kinds and "enum" in kinds:
            raise _Unsupported("a string and an enum in one union")
        if kinds.count("array") > 1 or kinds.count("map") + kinds.count("record") > 1:
            raise _Unsupported("a union whose branch the value's type does not settle")

        def first(*accepting: str) -> int | None:
            return next((i for i, k in enumerate(kinds) if k in accepting), None)

        pad = "    " * depth
        cases: list[tuple[str, list[str]]] = []
        ints: list[str] = []  # an int goes to the first int or long branch whose range holds it
        for i, k in enumerate(kinds):
            if k == "double":
                break  # fastavro's double takes ints too: from here, fastavro decides
            if k in RANGES:
                low, high = RANGES[k]
                ints += [f"{pad}    {'if' if not ints else 'elif'} {low} <= {x} <= {high}:",
                         f"{pad}        ap({zigzag(i)!r})",
                         *_varint(x, f"{pad}        ")]
        if ints:
            cases.append(("int", [*ints, f"{pad}    else:", f"{pad}        raise Unfit"]))
        for python, accepting in (("NoneType", ("null",)), ("bool", ("boolean",)),
                                  ("float", ("double",)), ("str", ("string", "enum")),
                                  ("bytes", ("bytes",)), ("list", ("array",)),
                                  ("dict", ("map", "record"))):
            at = first(*accepting)
            if at is None:
                continue
            cases.append((python, [f"{pad}    ap({zigzag(at)!r})", *self.value(
                branches[at], namespace, x, depth + 1, known=True)]))
        if not cases:
            raise _Unsupported("an empty union")
        lines = [f"{pad}t = type({x})"]
        for n, (python, body) in enumerate(cases):
            lines += [f"{pad}{'if' if n == 0 else 'elif'} t is {python}:", *body]
        return [*lines, f"{pad}else:", f"{pad}    raise Unfit"]


def _varint(x: str, pad: str = "") -> list[str]:
    """An int or long (in range): one byte from the table, most of the time."""
    return [f"{pad}n = ({x} << 1) ^ ({x} >> 63)", f"{pad}ap(ONE[n] if n < 128 else zz({x}))"]


def _ranged(kind: str) -> Callable[[str], list[str]]:
    low, high = RANGES[kind]
    return lambda x: [f"if type({x}) is not int or not {low} <= {x} <= {high}:",
                      "    raise Unfit", *_varint(x)]


def _sized(python: str, encode: str) -> Callable[[str], list[str]]:
    return lambda x: [f"if type({x}) is not {python}:", "    raise Unfit",
                      f"b = {x}{encode}", "n = len(b)", "ap(ONE[n + n] if n < 64 else zz(n))",
                      "ap(b)"]


_PRIMITIVE: dict[str, Callable[[str], list[str]]] = {
    "null": lambda x: [f"if {x} is not None:", "    raise Unfit"],
    "boolean": lambda x: [f"if {x} is True:", "    ap(b'\\x01')", f"elif {x} is False:",
                          "    ap(b'\\x00')", "else:", "    raise Unfit"],
    "int": _ranged("int"),
    "long": _ranged("long"),
    # fastavro's double also takes ints and the strings "NaN", "Infinity"...: Unfit
    "double": lambda x: [f"if type({x}) is not float:", "    raise Unfit", f"ap(pack_d({x}))"],
    "string": _sized("str", ".encode()"),
    "bytes": _sized("bytes", ""),
}
# a union's branch: the value's type is known (an int's range too)
_KNOWN: dict[str, Callable[[str], list[str]]] = {
    "null": lambda x: [],
    "boolean": lambda x: [f"ap(b'\\x01' if {x} else b'\\x00')"],
    "double": lambda x: [f"ap(pack_d({x}))"],
    "string": lambda x: [f"b = {x}.encode()", "n = len(b)", "ap(ONE[n + n] if n < 64 else zz(n))",
                         "ap(b)"],
}


class _ReaderGenerator(_Names):
    """A decoder's source: ``f(d, p)`` reads a value from bytes ``d`` at ``p``,
    returning it and where it ended."""

    def function(self, schema: Any, namespace: str) -> str:
        kind, schema, namespace = self.resolve(schema, namespace)
        name = f"r{len(self.functions)}"
        if kind != "record":
            self.functions[f"#{name}"] = name
            self.lines += [f"def {name}(d, p):", *self.value(schema, namespace, "v", 1),
                           "    return v, p", ""]
            return name
        full = self.full_name(schema, namespace)
        self.functions[full] = name
        self.title = self.title or full
        inner = full.rpartition(".")[0]
        body = [f"def {name}(d, p):"]
        names = []
        for i, f in enumerate(schema["fields"]):
            body += self.value(f["type"], inner, f"f{i}", 1)
            names.append(f"{f['name']!r}: f{i}")
        self.lines += [*body, f"    return {{{', '.join(names)}}}, p", ""]
        return name

    @staticmethod
    def varint(target: str, pad: str) -> list[str]:
        """Lines reading an int or long into ``target``: one byte, most of the time."""
        return [f"{pad}c = d[p]", f"{pad}if c < 128:", f"{pad}    {target} = (c >> 1) ^ -(c & 1)",
                f"{pad}    p += 1", f"{pad}else:", f"{pad}    {target}, p = long_at(d, p)"]

    def value(self, schema: Any, namespace: str, target: str, depth: int) -> list[str]:
        """Lines reading one value into variable ``target``, indented ``depth`` levels."""
        kind, schema, namespace = self.resolve(schema, namespace)
        pad = "    " * depth
        if kind == "null":
            return [f"{pad}{target} = None"]
        if kind == "boolean":
            return [f"{pad}c = d[p]", f"{pad}p += 1", f"{pad}if c == 0:",
                    f"{pad}    {target} = False", f"{pad}elif c == 1:", f"{pad}    {target} = True",
                    f"{pad}else:", f"{pad}    raise Unfit  # fastavro's: any other byte is True"]
        if kind in RANGES:
            return self.varint(target, pad)
        if kind == "double":
            return [f"{pad}{target} = unpack_d(d, p)[0]", f"{pad}p += 8"]
        if kind in ("string", "bytes"):
            decode = ".decode()" if kind == "string" else ""
            return [*self.varint("n", pad), f"{pad}if n < 0 or p + n > len(d):",
                    f"{pad}    raise Unfit", f"{pad}{target} = d[p:p + n]{decode}",
                    f"{pad}p += n"]
        if kind == "enum":
            symbols = self.constant(tuple(schema["symbols"]))
            return [*self.varint("i", pad), f"{pad}if not 0 <= i < {len(schema['symbols'])}:",
                    f"{pad}    raise Unfit", f"{pad}{target} = {symbols}[i]"]
        if kind == "record":
            return [f"{pad}{target}, p = {self.record_function(schema, namespace)}(d, p)"]
        if kind == "union":
            index = f"i{depth}"
            lines = self.varint(index, pad)
            for i, branch in enumerate(schema):
                lines += [f"{pad}{'if' if i == 0 else 'elif'} {index} == {i}:",
                          *self.value(branch, namespace, target, depth + 1)]
            return [*lines, f"{pad}else:", f"{pad}    raise Unfit"]
        # arrays and maps: blocks of a count of items each, until a count of 0
        count, item = f"n{depth}", f"y{depth}"
        lines = [f"{pad}{target} = {'[]' if kind == 'array' else '{}'}",
                 *self.varint(count, pad), f"{pad}while {count}:",
                 # a negative count (a block's size follows) or more items than bytes
                 f"{pad}    if {count} < 0 or {count} > len(d) - p:", f"{pad}        raise Unfit",
                 f"{pad}    for _ in range({count}):"]
        if kind == "array":
            lines += [*self.value(schema["items"], namespace, item, depth + 2),
                      f"{pad}        {target}.append({item})"]
        else:
            key = f"k{depth}"
            lines += [*self.value("string", namespace, key, depth + 2),
                      *self.value(schema["values"], namespace, item, depth + 2),
                      f"{pad}        {target}[{key}] = {item}"]
        return [*lines, *self.varint(count, pad + "    ")]
