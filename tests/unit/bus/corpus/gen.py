#!/usr/bin/env python3
"""Writes the bus frame corpus (*.hex) next to this script.

Each case is a byte stream as it would arrive on a connection: a 4-byte
big-endian length prefix, then the frame body. The bytes are built here with
a tiny MessagePack writer (no third-party module), so a hostile header can be
spelled out exactly. Run it again after changing a case; the .hex files are
checked in and are what the test reads.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


# -- a minimal MessagePack writer ---------------------------------------------

def uint(v):
    if v < 0x80:
        return bytes([v])
    if v < 0x100:
        return b"\xcc" + bytes([v])
    if v < 0x10000:
        return b"\xcd" + struct.pack(">H", v)
    if v < 0x100000000:
        return b"\xce" + struct.pack(">I", v)
    return b"\xcf" + struct.pack(">Q", v)


def sint(v):
    if v >= 0:
        return uint(v)
    if v >= -32:
        return struct.pack(">b", v)
    return b"\xd3" + struct.pack(">q", v)


def s(text):
    b = text.encode() if isinstance(text, str) else text
    if len(b) < 32:
        return bytes([0xA0 | len(b)]) + b
    if len(b) < 0x100:
        return b"\xd9" + bytes([len(b)]) + b
    return b"\xda" + struct.pack(">H", len(b)) + b


def binary(b):
    if len(b) < 0x100:
        return b"\xc4" + bytes([len(b)]) + b
    return b"\xc5" + struct.pack(">H", len(b)) + b


def fmap(pairs):
    """pairs: list of (key bytes, value bytes) already encoded."""
    out = bytes([0x80 | len(pairs)]) if len(pairs) < 16 else b"\xde" + struct.pack(">H", len(pairs))
    for k, v in pairs:
        out += k + v
    return out


def arr(items):
    return bytes([0x90 | len(items)]) + b"".join(items)


def frame(body):
    return struct.pack(">I", len(body)) + body


ID = bytes(range(16))


def pub(extra=(), drop=(), override=None):
    fields = {
        "t": uint(2),
        "topic": s("orders"),
        "key": binary(b"acct-1"),
        "id": binary(ID),
        "data": binary(b"hello"),
    }
    if override:
        fields.update(override)
    pairs = [(s(k), v) for k, v in fields.items() if k not in drop]
    pairs += list(extra)
    return fmap(pairs)


# -- the cases -----------------------------------------------------------------

CASES = []


def case(name, expect, comment, data, **limits):
    CASES.append((name, expect, comment, data, limits))


case("ok-pub", "ok", "A minimal valid PUB.", frame(pub()))
case("ok-hello", "ok", "HELLO with name and version 1.",
     frame(fmap([(s("t"), uint(1)), (s("v"), uint(1)), (s("name"), s("svc"))])))
case("ok-unknown-field", "ok", "PUB with an unknown field holding nested values: skipped.",
     frame(pub(extra=[(s("zz"), arr([uint(1), fmap([(s("a"), uint(2))])]))])))
case("ok-headers", "ok", "PUB with two headers (str and bin values).",
     frame(pub(extra=[(s("hdr"), fmap([(s("trace"), s("abc")), (s("k"), binary(b"\x00\x01"))]))])))
case("ok-deep-at-limit", "ok", "Unknown field nested to depth 4, the default limit.",
     frame(pub(extra=[(s("zz"), arr([arr([arr([uint(1)])])]))])))

case("frame-too-large", "BUS_E_FRAME_TOO_LARGE",
     "Length prefix of 1 MiB + 1 (default limit 1 MiB); no body follows: refused from the prefix alone.",
     struct.pack(">I", (1 << 20) + 1))
case("frame-too-large-4gib", "BUS_E_FRAME_TOO_LARGE", "Length prefix 0xffffffff.",
     b"\xff\xff\xff\xff" + pub())
case("frame-too-large-small-limit", "BUS_E_FRAME_TOO_LARGE", "A 40-byte PUB with frame_bytes_max 32.",
     frame(pub()), frame_bytes_max=32)
case("frame-zero-length", "BUS_E_MALFORMED", "Length prefix 0: no map at all.", struct.pack(">I", 0) + b"\x80")

case("bin32-4gib", "BUS_E_LENGTH", "PUB whose data is a bin32 header claiming 4 GiB in a small frame.",
     frame(pub(override={"data": b"\xc6\xff\xff\xff\xff" + b"xx"})))
case("str32-4gib-topic", "BUS_E_LENGTH", "Topic as str32 claiming 4 GiB.",
     frame(pub(override={"topic": b"\xdb\xff\xff\xff\xff" + b"orders"})))
case("str32-4gib-key", "BUS_E_LENGTH", "A map key as str32 claiming 4 GiB.",
     frame(b"\x81\xdb\xff\xff\xff\xff" + b"t\x02"))
case("map32-4gib-top", "BUS_E_LENGTH", "The frame map itself: map32 claiming 4 Gi entries.",
     frame(b"\xdf\xff\xff\xff\xff" + s("t") + uint(2)))
case("map32-4gib-hdr", "BUS_E_LENGTH", "Headers as map32 claiming 4 Gi entries.",
     frame(pub(extra=[(s("hdr"), b"\xdf\xff\xff\xff\xff")])))
case("array32-4gib-unknown", "BUS_E_LENGTH", "Unknown field: array32 claiming 4 Gi items.",
     frame(pub(extra=[(s("zz"), b"\xdd\xff\xff\xff\xff\x01")])))
case("ext32-4gib-unknown", "BUS_E_LENGTH", "Unknown field: ext32 claiming 4 GiB.",
     frame(pub(extra=[(s("zz"), b"\xc9\xff\xff\xff\xff\x01")])))
case("map-count-over-bytes", "BUS_E_LENGTH", "fixmap of 15 entries in a 5-byte body.",
     frame(b"\x8f" + s("t") + uint(2) + b"\x00"))
case("str8-past-end", "BUS_E_LENGTH", "Topic str8 of 200 bytes with 6 present, at the end of the frame.",
     frame(b"\x83" + s("t") + uint(2) + s("id") + binary(ID) + s("topic") + b"\xd9\xc8orders"))

case("truncated-uint64", "BUS_E_TRUNCATED", "ACK whose offset is a uint64 cut after 3 bytes.",
     frame(b"\x85" + s("t") + uint(6) + s("topic") + s("o") + s("group") + s("g") +
           s("p") + uint(0) + s("off") + b"\xcf\x00\x00\x01"))
case("truncated-value-missing", "BUS_E_TRUNCATED", "Map of 2 entries whose last value is missing.",
     frame(b"\x82" + s("t") + uint(8) + s("seq")))
case("truncated-fixext", "BUS_E_TRUNCATED", "Unknown field: fixext16 with 3 bytes left.",
     frame(b"\x82" + s("t") + uint(8) + s("zz") + b"\xd8\x01\x00\x00"))

case("too-deep", "BUS_E_TOO_DEEP", "Unknown field nested to depth 5 (limit 4).",
     frame(pub(extra=[(s("zz"), arr([arr([arr([arr([uint(1)])])])]))])))
case("too-deep-maps", "BUS_E_TOO_DEEP", "Unknown field of maps nested to depth 5.",
     frame(pub(extra=[(s("zz"), fmap([(s("a"), fmap([(s("b"), fmap([(s("c"), fmap([]))]))]))]))])))
case("too-deep-small-limit", "BUS_E_TOO_DEEP", "Headers map (depth 2) with depth_max 1.",
     frame(pub(extra=[(s("hdr"), fmap([]))])), depth_max=1)

case("type-t-str", "BUS_E_TYPE", "Frame type given as a string.", frame(pub(override={"t": s("2")})))
case("type-id-str", "BUS_E_TYPE", "Event id as str instead of bin.", frame(pub(override={"id": s("0123456789abcdef")})))
case("type-data-str", "BUS_E_TYPE", "Payload as str instead of bin.", frame(pub(override={"data": s("hello")})))
case("type-topic-int", "BUS_E_TYPE", "Topic as an integer.", frame(pub(override={"topic": uint(7)})))
case("type-hdr-array-value", "BUS_E_TYPE", "A header value that is an array.",
     frame(pub(extra=[(s("hdr"), fmap([(s("a"), arr([uint(1)]))]))])))
case("type-hdr-not-map", "BUS_E_TYPE", "Headers as an array.", frame(pub(extra=[(s("hdr"), arr([]))])))
case("type-key-int", "BUS_E_TYPE", "A map key that is an integer.", frame(b"\x81\x01\x02"))
case("type-offset-float", "BUS_E_TYPE", "ACK offset as float64.",
     frame(fmap([(s("t"), uint(6)), (s("topic"), s("o")), (s("group"), s("g")), (s("p"), uint(0)),
                 (s("off"), b"\xcb" + struct.pack(">d", 1.0))])))

case("missing-id", "BUS_E_MISSING", "PUB without an id.", frame(pub(drop=("id",))))
case("missing-data", "BUS_E_MISSING", "PUB without data.", frame(pub(drop=("data",))))
case("missing-type", "BUS_E_MISSING", "A map without \"t\".", frame(pub(drop=("t",))))
case("missing-max", "BUS_E_MISSING", "SUB without max.",
     frame(fmap([(s("t"), uint(4)), (s("topic"), s("orders")), (s("group"), s("g"))])))
case("missing-version", "BUS_E_MISSING", "HELLO without a version.",
     frame(fmap([(s("t"), uint(1)), (s("name"), s("svc"))])))

case("unknown-frame-99", "BUS_E_UNKNOWN_FRAME", "t = 99.", frame(fmap([(s("t"), uint(99))])))
case("unknown-frame-0", "BUS_E_UNKNOWN_FRAME", "t = 0.", frame(fmap([(s("t"), uint(0))])))

case("malformed-top-array", "BUS_E_MALFORMED", "The body is an array, not a map.", frame(arr([uint(2)])))
case("malformed-trailing", "BUS_E_MALFORMED", "Bytes after the map.", frame(pub() + b"\xc0"))
case("malformed-duplicate", "BUS_E_MALFORMED", "The topic field twice.",
     frame(pub(extra=[(s("topic"), s("other"))])))
case("malformed-c1", "BUS_E_MALFORMED", "The never-used byte 0xc1 as a value.",
     frame(pub(extra=[(s("zz"), b"\xc1")])))

case("name-dotdot", "BUS_E_NAME", "Topic \"../x\".", frame(pub(override={"topic": s("../x")})))
case("name-space", "BUS_E_NAME", "Topic with a space.", frame(pub(override={"topic": s("a b")})))
case("name-empty", "BUS_E_NAME", "Empty topic.", frame(pub(override={"topic": s("")})))
case("name-too-long", "BUS_E_NAME", "Topic of 129 bytes.", frame(pub(override={"topic": s("a" * 129)})))

case("limit-id-15", "BUS_E_LIMIT", "Event id of 15 bytes.", frame(pub(override={"id": binary(ID[:15])})))
case("limit-max-zero", "BUS_E_LIMIT", "SUB with max 0.",
     frame(fmap([(s("t"), uint(4)), (s("topic"), s("o")), (s("group"), s("g")), (s("max"), uint(0))])))
case("limit-max-huge", "BUS_E_LIMIT", "SUB with max 70000.",
     frame(fmap([(s("t"), uint(4)), (s("topic"), s("o")), (s("group"), s("g")), (s("max"), uint(70000))])))
case("limit-headers-33", "BUS_E_LIMIT", "33 headers (limit 32).",
     frame(pub(extra=[(s("hdr"), b"\xde\x00\x21" + b"".join(s("h%d" % i) + s("v") for i in range(33)))])))
case("limit-key-257", "BUS_E_LIMIT", "Key of 257 bytes.", frame(pub(override={"key": binary(b"k" * 257)})))
case("limit-partition-negative", "BUS_E_LIMIT", "ACK with partition -1.",
     frame(fmap([(s("t"), uint(6)), (s("topic"), s("o")), (s("group"), s("g")), (s("p"), sint(-1)),
                 (s("off"), uint(0))])))


def write_case(name, expect, comment, data, limits):
    lines = ["# " + comment, "# expect: " + expect]
    for k, v in limits.items():
        lines.append("# %s: %d" % (k, v))
    for i in range(0, len(data), 16):
        lines.append(" ".join("%02x" % b for b in data[i:i + 16]))
    with open(os.path.join(HERE, name + ".hex"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    for old in os.listdir(HERE):
        if old.endswith(".hex"):
            os.remove(os.path.join(HERE, old))
    for c in CASES:
        write_case(*c)
    print("%d cases written" % len(CASES))


if __name__ == "__main__":
    main()
