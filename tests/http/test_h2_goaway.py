"""sidecar.http.h2_goaway: GOAWAY frames are taken out of a received byte stream, whatever the
read boundaries, and every other byte goes through unchanged and in order."""

from __future__ import annotations

from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, PingFrame, SettingsFrame
from hypothesis import given
from hypothesis import strategies as st

from sidecar.http.h2_goaway import MAX_GOAWAY_PAYLOAD, GoawayTap

OTHERS = [
    SettingsFrame(0, settings={4: 65535}).serialize(),
    HeadersFrame(1, b"\x88", flags=["END_HEADERS"]).serialize(),
    DataFrame(1, b"x" * 3000, flags=["END_STREAM"]).serialize(),
    PingFrame(0, b"12345678").serialize(),
    DataFrame(3, b"").serialize(),
]


def run(tap: GoawayTap, data: bytes, cuts: list[int]) -> tuple[bytes, list[tuple[int, int]]]:
    passed = b""
    found: list[tuple[int, int]] = []
    start = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        out, goaways = tap.feed(data[start:cut])
        passed += out
        found += [(g.last_stream_id, g.error_code) for g in goaways]
        start = max(start, cut)
    return passed, found


@given(st.lists(st.sampled_from(range(len(OTHERS) + 1)), max_size=12), st.lists(st.integers(0, 10**6), max_size=20))
def test_goaways_are_taken_out_and_the_rest_passes_unchanged(order: list[int], cuts: list[int]) -> None:
    stream = b""
    expected_rest = b""
    expected_goaways = []
    for n, index in enumerate(order):
        if index == len(OTHERS):
            stream += GoAwayFrame(0, last_stream_id=2 * n + 1, error_code=n, additional_data=b"debug").serialize()
            expected_goaways.append((2 * n + 1, n))
        else:
            stream += OTHERS[index]
            expected_rest += OTHERS[index]
    passed, found = run(GoawayTap(), stream, cuts)
    assert passed == expected_rest
    assert found == expected_goaways


def test_huge_debug_data_is_skipped_not_kept() -> None:
    tap = GoawayTap()
    frame = GoAwayFrame(0, last_stream_id=7, error_code=0, additional_data=b"d" * 100_000).serialize()
    passed, found = run(tap, frame + OTHERS[3], list(range(0, len(frame), 4096)))
    assert found == [(7, 0)] and passed == OTHERS[3]
    assert len(tap._payload) <= MAX_GOAWAY_PAYLOAD


def test_a_goaway_on_a_stream_goes_to_h2_to_be_rejected() -> None:
    bad = bytearray(GoAwayFrame(0, last_stream_id=1, error_code=0).serialize())
    bad[8] = 1  # stream id 1: a protocol error h2 reports
    passed, found = run(GoawayTap(), bytes(bad), [])
    assert passed == bytes(bad) and found == []
