"""Oracle: our HTTP/1.1 request codec and h11 read every valid request the same way."""

from __future__ import annotations

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.http.h1 import (
    CHUNKED,
    END,
    ChunkedDecoder,
    chunk_bytes,
    last_chunk_bytes,
    parse_request_head,
    request_body_length,
    request_head_bytes,
)
from sidecar.http.message import Headers

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Names that decide framing or that h11 treats specially are set by the generator itself.
RESERVED = {"content-length", "transfer-encoding", "host", "connection", "expect", "upgrade", "te", "trailer"}


@st.composite
def header_names(draw: st.DrawFn) -> bytes:
    base = draw(st.text(alphabet=TCHAR, min_size=1, max_size=16).filter(lambda n: n.lower() not in RESERVED))
    # Random casing of every letter.
    flips = draw(st.lists(st.booleans(), min_size=len(base), max_size=len(base)))
    return "".join(c.upper() if f else c.lower() for c, f in zip(base, flips, strict=True)).encode()


# field-content: visible chars (and obs-text), inner spaces/tabs only.
_vchar = st.one_of(st.integers(0x21, 0x7E), st.integers(0x80, 0xFF)).map(lambda i: bytes([i]))
header_values = st.lists(
    st.tuples(st.sampled_from([b"", b" ", b"\t", b"  "]), st.lists(_vchar, min_size=1, max_size=8).map(b"".join)),
    max_size=4,
).map(lambda parts: b"".join(ws + word for ws, word in parts).strip(b" \t"))

methods = st.one_of(
    st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"]),
    st.text(alphabet=TCHAR, min_size=1, max_size=10).map(str.encode),
)
targets = st.one_of(
    st.just(b"/"),
    st.lists(st.integers(0x21, 0x7E), min_size=0, max_size=40).map(lambda cs: b"/" + bytes(cs)),
)


@st.composite
def requests(draw: st.DrawFn) -> dict:
    method = draw(methods)
    target = draw(targets)
    host = draw(st.sampled_from([b"example.com", b"orders:8080", b"[::1]:15001", b"a.b.c"]))
    fields = [(draw(st.sampled_from([b"Host", b"host", b"HOST"])), host)]
    fields += draw(st.lists(st.tuples(header_names(), header_values), max_size=8))
    chunked = draw(st.booleans())
    chunks = draw(st.lists(st.binary(min_size=1, max_size=200), max_size=5))
    trailers = draw(st.lists(st.tuples(header_names(), header_values), max_size=3)) if chunked else []
    return {
        "method": method,
        "target": target,
        "fields": fields,
        "chunked": chunked,
        "chunks": chunks,
        "trailers": trailers,
    }


def serialize(req: dict) -> bytes:
    body = b"".join(req["chunks"])
    headers = Headers.of(req["fields"])
    if req["chunked"]:
        head = request_head_bytes(req["method"], req["target"], headers, CHUNKED)
        trailers = Headers.of(req["trailers"]) if req["trailers"] else None
        return head + b"".join(chunk_bytes(c) for c in req["chunks"]) + last_chunk_bytes(trailers)
    return request_head_bytes(req["method"], req["target"], headers, len(body)) + body


def parse_ours(data: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], list[bytes], bytes, list, bytes]:
    end = data.index(b"\r\n\r\n")
    head = parse_request_head(data[:end])
    buf = bytearray(data[end + 4 :])
    framing = request_body_length(head)
    trailers: list[tuple[bytes, bytes]] = []
    if framing == CHUNKED:
        decoder = ChunkedDecoder()
        body = bytearray()
        while (piece := decoder.next(buf)) is not END:
            assert piece is not None
            body += piece
        if decoder.trailers is not None:
            trailers = decoder.trailers.items()
    else:
        body = buf[:framing]
        del buf[:framing]
    return (
        head.method,
        head.target,
        head.headers.items(),
        [raw for _, raw, _ in head.headers.fields],
        bytes(body),
        trailers,
        bytes(buf),
    )


def parse_h11(data: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], list[bytes], bytes, list, bytes]:
    server = h11.Connection(h11.SERVER)
    server.receive_data(data)
    request = server.next_event()
    assert isinstance(request, h11.Request)
    body = bytearray()
    while True:
        event = server.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        else:
            assert isinstance(event, h11.EndOfMessage), event
            break
    leftover, _closed = server.trailing_data
    return (
        bytes(request.method),
        bytes(request.target),
        [(bytes(n), bytes(v)) for n, v in request.headers],
        [bytes(raw) for raw, _ in request.headers.raw_items()],
        bytes(body),
        [(bytes(n), bytes(v)) for n, v in event.headers],
        bytes(leftover),
    )


NEXT = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(req=requests())
def test_ours_and_h11_agree_on_our_serialization(req: dict) -> None:
    data = serialize(req)
    ours = parse_ours(data + NEXT)  # a pipelined request behind it stays in the buffer
    theirs = parse_h11(data)
    assert ours[:5] == theirs[:5]
    assert ours[5] == theirs[5]
    # And both agree with what was generated.
    assert ours[0] == req["method"]
    assert ours[1] == req["target"]
    assert ours[4] == b"".join(req["chunks"])
    assert ours[3][: len(req["fields"])] == [name for name, _ in req["fields"]]
    assert ours[6] == NEXT


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(req=requests())
def test_ours_reads_what_h11_client_writes(req: dict) -> None:
    """The other direction: h11 serializes (its own framing choice), we parse."""
    client = h11.Connection(h11.CLIENT)
    body = b"".join(req["chunks"])
    fields = list(req["fields"])
    if req["chunked"]:
        fields.append((b"Transfer-Encoding", b"chunked"))
    else:
        fields.append((b"Content-Length", str(len(body)).encode()))
    data = client.send(h11.Request(method=req["method"], target=req["target"], headers=fields))
    for chunk in req["chunks"]:
        data += client.send(h11.Data(data=chunk))
    data += client.send(h11.EndOfMessage(headers=req["trailers"]))
    ours = parse_ours(data)
    assert ours[0] == req["method"]
    assert ours[1] == req["target"]
    assert ours[2] == [(name.lower(), value) for name, value in fields]
    assert ours[4] == body
    assert ours[5] == [(name.lower(), value) for name, value in req["trailers"]]
    assert ours[6] == b""
