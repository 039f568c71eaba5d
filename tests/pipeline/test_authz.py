"""The inbound identity layers with a fake inner handler: allow list and XFCC."""

from __future__ import annotations

import pytest

from sidecar.http.errors import Unauthorized
from sidecar.http.message import EMPTY_BODY, ConnectionInfo, Headers, Request, Response
from sidecar.pipeline.authz import authorize, forward_client_cert
from sidecar.tls import AllowList

CALLER = "spiffe://mesh.local/ns/default/sa/frontend"
US = "spiffe://mesh.local/ns/default/sa/orders"


def request(identity: str | None, *headers: tuple[bytes, bytes]) -> Request:
    conn = ConnectionInfo("10.0.0.1", 5555, tls=identity is not None, peer_identity=identity)
    return Request(b"GET", b"/", b"orders", Headers.of(headers), EMPTY_BODY, conn)


class Inner:
    def __init__(self) -> None:
        self.seen: list[Request] = []

    async def __call__(self, req: Request) -> Response:
        self.seen.append(req)
        return Response(200, Headers())


async def test_without_allow_list_every_accepted_caller_passes() -> None:
    inner = Inner()
    handler = authorize(lambda: None)(inner)
    assert (await handler(request(None))).status == 200
    assert (await handler(request(CALLER))).status == 200


async def test_allow_list_refuses_others_and_plaintext() -> None:
    inner = Inner()
    handler = authorize(lambda: AllowList(["spiffe://mesh.local/ns/default/sa/front*"]))(inner)
    assert (await handler(request(CALLER))).status == 200
    with pytest.raises(Unauthorized):
        await handler(request("spiffe://mesh.local/ns/default/sa/payments"))
    with pytest.raises(Unauthorized):
        await handler(request(None))
    assert len(inner.seen) == 1


async def test_xfcc_is_replaced_by_the_verified_caller() -> None:
    inner = Inner()
    handler = forward_client_cert(lambda: US)(inner)
    await handler(request(CALLER, (b"X-Forwarded-Client-Cert", b"URI=spiffe://evil/admin"), (b"a", b"1")))
    assert inner.seen[0].headers.get_all(b"x-forwarded-client-cert") == [f"By={US};URI={CALLER}".encode()]
    assert inner.seen[0].headers.get(b"a") == b"1"


async def test_forged_xfcc_from_a_plaintext_caller_is_dropped() -> None:
    inner = Inner()
    handler = forward_client_cert(lambda: US)(inner)
    await handler(request(None, (b"x-forwarded-client-cert", b"URI=spiffe://evil/admin")))
    assert b"x-forwarded-client-cert" not in inner.seen[0].headers
