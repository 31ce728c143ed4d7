#!/usr/bin/env python3
"""A minimal writer of MaxMind DB files (the format libmaxminddb reads: "MaxMind DB File
Format Specification" 2.0), for tests: an IPv6 tree (IPv4 under ::/96) whose records point
to maps { country = { iso_code = CC } }, as GeoLite2-Country has. No real geodata exists in
Debian, so the tests make their own database.

    mmdb_writer.py OUT.mmdb 192.0.2.0/24=FR 2001:db8::/32=DE ...

Entries are applied in order of prefix length (wider first), so a narrower prefix inside a
wider one wins."""

import ipaddress
import sys
import time

METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"


def _ctrl(typ, size):
    """Control byte(s) for a type (1..15) and a payload size (< 285 here)."""
    ext = b""
    if typ > 7:
        ext = bytes([typ - 7])
        typ = 0
    if size < 29:
        return bytes([(typ << 5) | size]) + ext
    return bytes([(typ << 5) | 29]) + ext + bytes([size - 29])


def _uint(typ, v):
    b = v.to_bytes((v.bit_length() + 7) // 8, "big") if v else b""
    return _ctrl(typ, len(b)) + b


def encode(v):
    if isinstance(v, str):
        b = v.encode()
        return _ctrl(2, len(b)) + b
    if isinstance(v, dict):
        out = _ctrl(7, len(v))
        for k, x in v.items():
            out += encode(k) + encode(x)
        return out
    if isinstance(v, list):
        return _ctrl(11, len(v)) + b"".join(encode(x) for x in v)
    if isinstance(v, tuple):  # (type, int): uint16 = 5, uint32 = 6, uint64 = 9
        return _uint(v[0], v[1])
    raise TypeError(v)


def write(path, entries):
    nets = []
    for net, cc in entries:
        n = ipaddress.ip_network(net, strict=False)
        if n.version == 4:
            addr, plen = int(n.network_address), n.prefixlen + 96
        else:
            addr, plen = int(n.network_address), n.prefixlen
        nets.append((plen, addr, cc))
    nets.sort(key=lambda e: e[0])

    root = [None, None]
    for plen, addr, cc in nets:
        node = root
        for i in range(plen):
            bit = (addr >> (127 - i)) & 1
            if i == plen - 1:
                node[bit] = ("data", cc)
                break
            if not isinstance(node[bit], list):
                old = node[bit]
                node[bit] = [old, old]  # split: both halves keep what covered them
            node = node[bit]

    # Number the nodes breadth first; the data section holds one map per country.
    order, index = [root], {id(root): 0}
    i = 0
    while i < len(order):
        for child in order[i]:
            if isinstance(child, list):
                index[id(child)] = len(order)
                order.append(child)
        i += 1
    node_count = len(order)
    data, offsets = b"", {}
    for _, _, cc in nets:
        if cc not in offsets:
            offsets[cc] = len(data)
            data += encode({"country": {"iso_code": cc}})

    def record(child):
        if child is None:
            return node_count
        if isinstance(child, list):
            return index[id(child)]
        return node_count + 16 + offsets[child[1]]

    tree = bytearray()
    for node in order:
        for child in node:
            tree += record(child).to_bytes(3, "big")
    meta = encode({
        "binary_format_major_version": (5, 2),
        "binary_format_minor_version": (5, 0),
        "build_epoch": (9, int(time.time())),
        "database_type": "LuaProxy-Test-Country",
        "description": {"en": "luaproxy test database"},
        "ip_version": (5, 6),
        "languages": ["en"],
        "node_count": (6, node_count),
        "record_size": (5, 24),
    })
    with open(path, "wb") as f:
        f.write(bytes(tree) + b"\0" * 16 + data + METADATA_MARKER + meta)


if __name__ == "__main__":
    write(sys.argv[1], [tuple(a.split("=", 1)) for a in sys.argv[2:]])
