"""Who the client is behind a reverse proxy: `X-Forwarded-For`, believed from trusted proxies only.

Behind Caddy every request comes from the proxy's address. Only the slowing of failed
authentications (api.auth.FailureLimiter) needs the client's own address, so it is worked out
there, on the failure path, not for every request. The rightmost address in X-Forwarded-For
that is not a trusted proxy is the client (Caddy appends the address it saw; anything to the
left of it came from the client and could be made up); a request that did not come from a
trusted proxy is its own client whatever it says.
"""

from __future__ import annotations

import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _trusted(address: str, trusted: tuple[Network, ...]) -> bool | None:
    """Whether the address is a trusted proxy; None when it is not an address at all."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return any(ip in network for network in trusted)


def client_address(peer: str | None, forwarded_for: list[str], trusted: tuple[Network, ...]) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the rightmost
    X-Forwarded-For hop that is not one (the leftmost if every hop is)."""
    if peer is None or not trusted or not _trusted(peer, trusted):
        return peer or "unknown"
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        is_proxy = _trusted(hop, trusted)
        if is_proxy is None:  # not an address: nothing further left can be believed
            return peer
        if not is_proxy:
            return hop
    return hops[0] if hops else peer
