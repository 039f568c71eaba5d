"""Oracle: our HTTP/2 codec and h2 interoperate. Hypothesis plays random exchanges — several streams
interleaved, bodies of any size under flow control, trailers, resets from either side, PINGs, and the
h2 peer changing its SETTINGS (window and frame sizes) mid-way — between an h2 client and our server,
our client and an h2 server, and our codec on both ends, with the bytes cut at random points. Both
ends must see the same requests, responses, bodies, trailers and resets, and once the wire is quiet
their flow-control windows must agree."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.http.h2_conn import (
    DATA_RECEIVED,
    HEADERS_RECEIVED,
    PREFACE,
    STREAM_RESET,
    TRAILERS_RECEIVED,
    H2Connection,
)

Fields = list[tuple[bytes, bytes]]
NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_.!#$%&'*+^`|~"
RESERVED = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "host", "cookie"}
RESERVED |= {"content-length"}

names = st.text(alphabet=NAME_CHARS, min_size=1, max_size=20).filter(lambda n: n not in RESERVED).map(str.encode)
_visible = st.integers(0x21, 0x7E).map(lambda i: bytes([i]))
values = st.lists(
    st.tuples(st.sampled_from([b"", b" ", b"\t "]), st.lists(_visible, min_size=1, max_size=12).map(b"".join)),
    max_size=4,
).map(lambda parts: b"".join(ws + word for ws, word in parts).lstrip(b" \t"))
regular_fields = st.lists(st.tuples(names, values), max_size=8)
paths = st.lists(st.integers(0x21, 0x7E), max_size=30).map(lambda cs: b"/" + bytes(cs))
_large = st.builds(lambda size, byte: bytes([byte]) * size, st.integers(1, 50_000), st.integers(0, 255))
bodies = st.lists(st.binary(min_size=1, max_size=300) | _large, max_size=5)


@dataclass
class Message:
    head: Fields
    chunks: list[bytes]
    trailers: Fields | None


@st.composite
def messages(draw: st.DrawFn, request: bool) -> Message:
    if request:
        head = [
            (b":method", draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE"]))),
            (b":scheme", draw(st.sampled_from([b"http", b"https"]))),
            (b":authority", draw(st.sampled_from([b"orders", b"orders:8080", b"[::1]:443"]))),
            (b":path", draw(paths)),
        ]
    else:
        head = [(b":status", str(draw(st.integers(200, 599))).encode())]
    chunks = draw(bodies)
    if draw(st.booleans()):
        head.append((b"content-length", str(sum(map(len, chunks))).encode()))
    head += draw(regular_fields)
    trailers = draw(st.none() | st.lists(st.tuples(names, values), min_size=1, max_size=3))
    return Message(head, chunks, trailers)


@dataclass
class Plan:
    request: Message
    response: Message
    reset_by: str | None  # "client" or "server": that side resets instead of finishing
    reset_after: int  # ... after this many of its own actions
    reset_code: int


plans = st.builds(
    Plan,
    messages(True),
    messages(False),
    st.sampled_from([None, None, "client", "server"]),
    st.integers(1, 4),
    st.sampled_from([0x0, 0x2, 0x8]),
)


# -- the two implementations behind one interface ------------------------------------------------


class Side:
    """One end of the connection; `received` holds what it saw, normalised, per stream."""

    name = ""

    def __init__(self) -> None:
        self.received: dict[int, list[tuple[Any, ...]]] = {}

    def record(self, stream_id: int, *event: Any) -> None:
        self.received.setdefault(stream_id, []).append(event)


class Ours(Side):
    def __init__(self, client: bool) -> None:
        super().__init__()
        self.conn = H2Connection(client=client)
        self.conn.initiate()

    def new_stream_id(self) -> int:
        return self.conn.new_stream_id()

    def send_headers(self, stream_id: int, fields: Fields, end: bool) -> None:
        self.conn.send_headers(stream_id, fields, end_stream=end)

    def send_data(self, stream_id: int, data: bytes, end: bool) -> None:
        self.conn.send_data(stream_id, data, end_stream=end)

    def reset(self, stream_id: int, code: int) -> None:
        self.conn.reset(stream_id, code)

    def window(self, stream_id: int) -> int:
        return self.conn.send_window(stream_id)

    def out(self) -> bytes:
        return self.conn.data_to_send()

    def receive(self, data: bytes) -> None:
        for event in self.conn.receive(data):
            kind, stream_id = event[0], event[1]
            if kind == HEADERS_RECEIVED:
                self.record(stream_id, "headers", event[2])
                if event[3]:
                    self.record(stream_id, "end")
            elif kind == DATA_RECEIVED:
                if event[2]:
                    self.record(stream_id, "data", event[2])
                self.conn.acknowledge(stream_id, event[3])
                if event[4]:
                    self.record(stream_id, "end")
            elif kind == TRAILERS_RECEIVED:
                self.record(stream_id, "trailers", event[2])
                self.record(stream_id, "end")
            elif kind == STREAM_RESET:
                assert event[3], f"stream error on valid traffic: {event}"
                self.record(stream_id, "reset", event[2])

    def windows(self) -> tuple[int, int, dict[int, tuple[int, int]]]:
        conn = self.conn
        streams = {sid: (s.send_window, s.recv_window) for sid, s in conn.streams.items()}
        return conn.send_connection_window, conn.recv_connection_window, streams


class Theirs(Side):
    def __init__(self, client: bool) -> None:
        super().__init__()
        config = h2.config.H2Configuration(client_side=client, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        self.settings_sent = 1
        self.settings_acked = 0

    def new_stream_id(self) -> int:
        return self.conn.get_next_available_stream_id()

    def send_headers(self, stream_id: int, fields: Fields, end: bool) -> None:
        self.conn.send_headers(stream_id, fields, end_stream=end)

    def send_data(self, stream_id: int, data: bytes, end: bool) -> None:
        self.conn.send_data(stream_id, data, end_stream=end)

    def reset(self, stream_id: int, code: int) -> None:
        self.conn.reset_stream(stream_id, code)

    def window(self, stream_id: int) -> int:
        try:
            return min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
        except h2.exceptions.StreamClosedError:
            return 0

    def out(self) -> bytes:
        return self.conn.data_to_send()

    def receive(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, (h2.events.RequestReceived, h2.events.ResponseReceived)):
                self.record(event.stream_id, "headers", event.headers)
            elif isinstance(event, h2.events.DataReceived):
                if event.data:
                    self.record(event.stream_id, "data", event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                self.record(event.stream_id, "trailers", event.headers)
            elif isinstance(event, h2.events.StreamEnded):
                self.record(event.stream_id, "end")
            elif isinstance(event, h2.events.StreamReset):
                assert event.remote_reset, f"h2 reset a stream itself: {event}"
                self.record(event.stream_id, "reset", event.error_code)
            elif isinstance(event, h2.events.SettingsAcknowledged):
                self.settings_acked += 1
            elif isinstance(event, h2.events.ConnectionTerminated):
                raise AssertionError(f"h2 ended the connection: {event}")

    def change_settings(self, rnd: random.Random) -> None:
        """New window and frame sizes, once every SETTINGS h2 sent is acknowledged: h2 applies an ACK
        to the oldest value still pending, and the SETTINGS of its opening are not pending, so an update
        sent before the opening's ACK would be applied by that ACK, early."""
        if self.settings_acked < self.settings_sent:
            return
        self.settings_sent += 1
        self.conn.update_settings(
            {
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: rnd.choice([700, 65535, 1 << 20]),
                h2.settings.SettingCodes.MAX_FRAME_SIZE: rnd.choice([16384, 20000, 1 << 20]),
            }
        )

    def windows(self) -> tuple[int, int, dict[int, tuple[int, int]]]:
        conn = self.conn
        streams = {
            sid: (s.outbound_flow_control_window, s.inbound_flow_control_window)
            for sid, s in conn.streams.items()
            if s.open
        }
        return conn.outbound_flow_control_window, conn.inbound_flow_control_window, streams


# -- one exchange --------------------------------------------------------------------------------


@dataclass
class Flow:
    """One side's part of one stream: the actions still to do and what it sent."""

    actions: list[tuple[Any, ...]]
    sent: list[tuple[Any, ...]] = field(default_factory=list)
    started: bool = False


def actions_for(message: Message, reset_after: int | None, reset_code: int) -> list[tuple[Any, ...]]:
    actions: list[tuple[Any, ...]] = [("headers", message.head)]
    actions += [("data", chunk) for chunk in message.chunks]
    actions.append(("trailers", message.trailers) if message.trailers else ("end",))
    if reset_after is not None:
        actions = [*actions[: min(reset_after, len(actions) - 1)], ("reset", reset_code)]
    return actions


def transfer(a: Side, b: Side, rnd: random.Random) -> bool:
    """Move what each side has queued to the other, cut at a random point for our codec, and frame by
    frame for h2 (which checks a frame's size against the limit in force when the read began, not
    when the SETTINGS ACK before that frame arrived); True if anything moved."""
    moved = False
    for src, dst in ((a, b), (b, a)):
        data = src.out()
        if not data:
            continue
        moved = True
        if isinstance(dst, Theirs):
            for piece in frames_of(data):
                dst.receive(piece)
        else:
            cut = rnd.randint(0, len(data))
            dst.receive(data[:cut])
            dst.receive(data[cut:])
    return moved


def frames_of(data: bytes) -> list[bytes]:
    pieces = []
    if data.startswith(PREFACE):
        pieces.append(PREFACE)
        data = data[len(PREFACE) :]
    pos = 0
    while pos < len(data):
        end = pos + 9 + int.from_bytes(data[pos : pos + 3], "big")
        pieces.append(data[pos:end])
        pos = end
    return pieces


def run(client: Side, server: Side, exchange: list[Plan], rnd: random.Random, settings_changes: bool) -> None:
    transfer(client, server, rnd)
    flows: dict[tuple[str, int], Flow] = {}
    pending = list(exchange)
    steps = 0
    while True:
        steps += 1
        assert steps < 100_000, "the exchange does not progress"
        ready = []
        if pending:
            ready.append(("open", 0))
        for (role, stream_id), flow in flows.items():
            if not flow.actions:
                continue
            if role == "server" and not flow.started and not server.received.get(stream_id):
                continue  # the request has not arrived yet
            kind = flow.actions[0][0]
            side = client if role == "client" else server
            if kind == "data" and side.window(stream_id) <= 0:
                continue
            if kind == "end" and side.window(stream_id) < 0:
                continue  # h2 refuses even an empty DATA frame while a window is below 0
            ready.append((role, stream_id))
        if not ready:
            if not transfer(client, server, rnd):
                break
            continue
        role, stream_id = rnd.choice(ready)
        if role == "open":
            plan = pending.pop(0)
            stream_id = client.new_stream_id()
            flows["client", stream_id] = Flow(
                actions_for(plan.request, plan.reset_after if plan.reset_by == "client" else None, plan.reset_code)
            )
            flows["server", stream_id] = Flow(
                actions_for(plan.response, plan.reset_after if plan.reset_by == "server" else None, plan.reset_code)
            )
            role = "client"
        side = client if role == "client" else server
        other = flows["server" if role == "client" else "client", stream_id]
        flow = flows[role, stream_id]
        if other.sent and other.sent[-1][0] == "reset":
            flow.actions = []  # the other side reset the stream: nothing more to do
            continue
        step(side, stream_id, flow)
        if rnd.random() < 0.1:
            side.conn.ping(b"\1" * 8)
        if settings_changes and isinstance(server, Theirs) and rnd.random() < 0.1:
            server.change_settings(rnd)
        if settings_changes and isinstance(client, Theirs) and rnd.random() < 0.1:
            client.change_settings(rnd)
        if rnd.random() < 0.5:
            transfer(client, server, rnd)
    while transfer(client, server, rnd):
        pass
    for (role, stream_id), flow in flows.items():
        receiver = server if role == "client" else client
        check_stream(
            flow, receiver.received.get(stream_id, []), flows["server" if role == "client" else "client", stream_id]
        )
    check_windows(client, server)


def step(side: Side, stream_id: int, flow: Flow) -> None:
    action = flow.actions[0]
    kind = action[0]
    flow.started = True
    if kind == "headers":
        last = len(flow.actions) == 2 and flow.actions[1][0] == "end"
        side.send_headers(stream_id, action[1], last)
        flow.sent.append(action)
        flow.actions.pop(0)
        if last:
            flow.actions.pop(0)
            flow.sent.append(("end",))
    elif kind == "data":
        chunk = action[1]
        size = min(len(chunk), side.window(stream_id))
        last = size == len(chunk) and len(flow.actions) > 1 and flow.actions[1][0] == "end"
        side.send_data(stream_id, chunk[:size], last)
        flow.sent.append(("data", chunk[:size]))
        if size == len(chunk):
            flow.actions.pop(0)
        else:
            flow.actions[0] = ("data", chunk[size:])
        if last:
            flow.actions.pop(0)
            flow.sent.append(("end",))
    elif kind == "trailers":
        side.send_headers(stream_id, action[1], True)
        flow.sent += [action, ("end",)]
        flow.actions.pop(0)
    elif kind == "end":
        side.send_data(stream_id, b"", True)
        flow.sent.append(action)
        flow.actions.pop(0)
    else:
        side.reset(stream_id, action[1])
        flow.sent.append(action)
        flow.actions = []


def normalise(events: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Data chunks joined (framing may cut them anywhere), and nothing empty."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        if event[0] == "data":
            if not event[1]:
                continue
            if out and out[-1][0] == "data":
                out[-1] = ("data", out[-1][1] + event[1])
                continue
        out.append(event)
    return out


def check_stream(flow: Flow, seen: list[tuple[Any, ...]], other: Flow) -> None:
    """What the receiver saw of one direction of a stream is what the sender sent, to the point where
    either side reset it."""
    sent = normalise(flow.sent)
    seen = normalise([e for e in seen if e[0] != "reset" or flow.sent[-1][0] == "reset"])
    if sent and sent[-1][0] == "reset":
        assert seen[-1] == sent[-1], (seen, sent)  # the reset arrived, with its code
        sent, seen = sent[:-1], seen[:-1]
        assert seen == sent[: len(seen)] or _prefix_of_data(seen, sent), (seen, sent)
    elif other.sent and other.sent[-1][0] == "reset":
        assert seen == sent[: len(seen)] or _prefix_of_data(seen, sent), (seen, sent)
    else:
        assert seen == sent, (seen, sent)


def _prefix_of_data(seen: list[tuple[Any, ...]], sent: list[tuple[Any, ...]]) -> bool:
    """`seen` is `sent` cut inside a data chunk."""
    if not seen or seen[-1][0] != "data":
        return False
    n = len(seen) - 1
    return seen[:n] == sent[:n] and len(sent) > n and sent[n][0] == "data" and sent[n][1].startswith(seen[-1][1])


def check_windows(client: Side, server: Side) -> None:
    c_send, c_recv, c_streams = client.windows()  # type: ignore[attr-defined]
    s_send, s_recv, s_streams = server.windows()  # type: ignore[attr-defined]
    assert c_send == s_recv and s_send == c_recv
    for stream_id in c_streams.keys() & s_streams.keys():
        assert c_streams[stream_id][0] == s_streams[stream_id][1]
        assert s_streams[stream_id][0] == c_streams[stream_id][1]


SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@SETTINGS
@given(st.lists(plans, min_size=1, max_size=6), st.randoms(use_true_random=False), st.booleans())
def test_h2_client_and_our_server(exchange: list[Plan], rnd: random.Random, changes: bool) -> None:
    run(Theirs(client=True), Ours(client=False), exchange, rnd, changes)


@SETTINGS
@given(st.lists(plans, min_size=1, max_size=6), st.randoms(use_true_random=False), st.booleans())
def test_our_client_and_an_h2_server(exchange: list[Plan], rnd: random.Random, changes: bool) -> None:
    run(Ours(client=True), Theirs(client=False), exchange, rnd, changes)


@SETTINGS
@given(st.lists(plans, min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_our_codec_on_both_ends(exchange: list[Plan], rnd: random.Random) -> None:
    run(Ours(client=True), Ours(client=False), exchange, rnd, False)
