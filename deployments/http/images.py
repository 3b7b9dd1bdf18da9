"""Turning an image field of a request into encoded bytes.

An image arrives as base64, a data URI, an http(s) URL, an uploaded multipart
file, or (only when ``file_root`` is configured) a ``file:///absolute/path``
URI naming a file under that root. A bare string is never taken for a path:
``/9j/...`` is a JPEG in base64, not a file.

URLs are fetched safely against a hostile sender: the host is resolved once,
every address it resolves to must be public (unless ``urls.allow_private``),
and the connection goes to that checked address (the original Host header, TLS
SNI and certificate check are kept), so a second DNS answer cannot point the
fetch elsewhere. Only ``urls.allowed_ports`` may be named, at most
``urls.max_redirects`` redirects are followed, each checked the same way, the
size is capped while streaming and ``urls.timeout_s`` bounds the whole fetch.

Large base64 strings are decoded in a worker thread, in slices so that the
event loop gets the GIL back between them; decoding itself (pixels) happens in
the detector.
"""

from __future__ import annotations

import asyncio
import binascii
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
# SIMD base64: decode_base64 takes a 14.7 MB string in 12.5 ms instead of 51 ms
import pybase64 as base64

from configs.settings import Settings
from pipelines.errors import ImageDecodeError, ImageTooLarge, UrlFetchFailed, ValidationError

#: (host, port) -> the IP addresses to connect to; injectable for tests
HostResolver = Callable[[str, int], Awaitable[list[str]]]

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,",
                       re.IGNORECASE)
#: a data URI's header is short; matching only this much keeps a hostile
#: 27 MB "data:..." string without a comma from being scanned
_DATA_URI_HEAD = 256
#: base64 strings longer than this are decoded in a worker thread (a hop costs
#: ~50 us; decoding 256 KiB inline ~1 ms)
INLINE_BASE64_CHARS = 256 * 1024
#: binascii holds the GIL while it runs: decode in slices of this many characters
_B64_SLICE = 256 * 1024
_REDIRECTS = {301, 302, 303, 307, 308}
_DEFAULT_PORTS = {"http": 80, "https": 443}


async def system_resolver(host: str, port: int) -> list[str]:
    """The machine's resolver (getaddrinfo in the loop's executor)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


#: IPv6 prefixes whose last 32 bits are an IPv4 address a gateway forwards to:
#: NAT64 (RFC 6052 well-known and RFC 8215 local-use prefixes)
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address
                  ) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, which is what a fetch would
    reach: IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::a.b.c.d``, 6to4
    ``2002:AABB:CCDD::`` and the deprecated IPv4-compatible ``::a.b.c.d``.
    Python counts the last three as global whatever IPv4 address they carry, so
    ``64:ff9b::7f00:1`` (127.0.0.1) passed the check. None for any other address."""
    if ip.version != 6:
        return None
    assert isinstance(ip, ipaddress.IPv6Address)
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    n = int(ip)
    if any(ip in net for net in _NAT64) or (n >> 32 == 0 and n > 1):
        return ipaddress.IPv4Address(n & 0xFFFFFFFF)
    return None


class ImageResolver:
    """Resolves request image values to bytes according to the settings."""

    def __init__(self, settings: Settings, resolve_host: HostResolver | None = None,
                 inline_base64_chars: int = INLINE_BASE64_CHARS,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.s = settings
        self._resolve_host = resolve_host or system_resolver
        self._inline_chars = inline_base64_chars
        # No keep-alive: connections are opened to pinned IPs, and a pooled
        # connection must never serve a request for another host name.
        # trust_env off: no proxy or .netrc from the environment.
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.urls.timeout_s), follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0), trust_env=False,
            verify=ssl_context if ssl_context is not None else True,
            headers={"User-Agent": "facefleet/0.1", "Accept-Encoding": "identity"})

    async def resolve(self, value: str | bytes, field: str = "img") -> bytes:
        if isinstance(value, bytes):
            return self._check_size(value)
        if not isinstance(value, str) or not value.strip():
            raise ValidationError(f"'{field}' must be a non-empty image string or file",
                                  {"field": field})
        v = value.strip()
        m = _DATA_URI.match(v[:_DATA_URI_HEAD])
        if m:
            return await self._b64(v[m.end():], field)
        low = v[:8].lower()
        if low.startswith("http://") or low.startswith("https://"):
            return await self._fetch(v, field)
        if low.startswith("file:"):
            return await self._file(v, field)
        return await self._b64(v, field)

    def _check_size(self, data: bytes) -> bytes:
        if len(data) > self.s.images.max_bytes:
            raise ImageTooLarge(f"image is {len(data)} bytes; the limit is {self.s.images.max_bytes}",
                                {"bytes": len(data), "max_bytes": self.s.images.max_bytes})
        return data

    # ------------------------------------------------------------------ base64
    async def _b64(self, text: str, field: str) -> bytes:
        limit = self.s.images.max_bytes
        # base64 inflates by 4/3 (and MIME line breaks add 2 per 76): refuse
        # oversized strings before decoding them
        if len(text) > (limit + 2) // 3 * 4 * 78 // 76 + 8:
            raise ImageTooLarge(f"'{field}' is larger than {limit} bytes",
                                {"field": field, "max_bytes": limit})
        try:
            if len(text) > self._inline_chars:
                data = await asyncio.to_thread(decode_base64, text)
            else:
                data = decode_base64(text)
        except (binascii.Error, ValueError):
            raise ImageDecodeError(
                f"'{field}' is neither base64 image data, a data URI, an http(s) URL "
                "nor an uploaded file", {"field": field}) from None
        if not data:
            raise ImageDecodeError(f"'{field}' is empty", {"field": field})
        return self._check_size(data)

    # ------------------------------------------------------------------ files
    async def _file(self, uri: str, field: str) -> bytes:
        if self.s.file_root is None:
            raise ValidationError(f"'{field}': file URIs are disabled on this server "
                                  "(set file_root to allow them)", {"field": field})
        parts = urlsplit(uri)
        if (parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost")
                or parts.query or parts.fragment or not parts.path.startswith("/")):
            raise ValidationError(f"'{field}' must be a file:///absolute/path URI",
                                  {"field": field})
        root = Path(self.s.file_root).resolve()
        try:
            # resolve() follows symlinks, so a link cannot lead out of the root
            target = Path(unquote(parts.path)).resolve()
            inside = target == root or root in target.parents
            size = target.stat().st_size if inside and target.is_file() else None
        except (OSError, ValueError):  # embedded NUL, permissions, loops
            raise ValidationError(f"'{field}' is not a readable file", {"field": field}) from None
        if not inside:
            raise ValidationError(f"'{field}' path is outside the allowed image root",
                                  {"field": field})
        if size is None:
            raise ValidationError(f"'{field}' file does not exist", {"field": field})
        if size > self.s.images.max_bytes:
            raise ImageTooLarge(f"'{field}' file is larger than {self.s.images.max_bytes} bytes",
                                {"field": field, "max_bytes": self.s.images.max_bytes})
        try:
            return self._check_size(await asyncio.to_thread(target.read_bytes))
        except OSError:
            raise ValidationError(f"'{field}' is not a readable file", {"field": field}) from None

    # ------------------------------------------------------------------ URLs
    async def _fetch(self, url: str, field: str) -> bytes:
        if not self.s.urls.enabled:
            raise ValidationError("image URLs are disabled on this server", {"field": field})
        try:
            return await asyncio.wait_for(self._follow(url, field), self.s.urls.timeout_s)
        except asyncio.TimeoutError:
            raise UrlFetchFailed(f"fetching '{field}' URL timed out", {"field": field}) from None

    async def _follow(self, url: str, field: str) -> bytes:
        target = self._checked_url(url, field)
        for _ in range(self.s.urls.max_redirects + 1):
            addresses = await self._addresses(target, field)
            got = await self._get(target, addresses, field)
            if isinstance(got, bytes):
                return got
            target = self._checked_url(got, field)
        raise UrlFetchFailed(f"'{field}' URL redirects more than {self.s.urls.max_redirects} "
                             "times", {"field": field, "max_redirects": self.s.urls.max_redirects})

    def _checked_url(self, url: str | httpx.URL, field: str) -> httpx.URL:
        try:
            u = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError):
            raise UrlFetchFailed(f"'{field}' URL is malformed", {"field": field}) from None
        if u.scheme not in _DEFAULT_PORTS:
            raise UrlFetchFailed(f"'{field}' URL scheme '{u.scheme}' is not http(s)",
                                 {"field": field})
        if not u.host:
            raise UrlFetchFailed(f"'{field}' URL has no host", {"field": field})
        port = u.port or _DEFAULT_PORTS[u.scheme]
        if port not in self.s.urls.allowed_ports:
            raise UrlFetchFailed(f"'{field}' URL port {port} is not allowed",
                                 {"field": field, "port": port,
                                  "allowed_ports": list(self.s.urls.allowed_ports)})
        return u

    async def _addresses(self, u: httpx.URL, field: str) -> list[str]:
        """Every address of the host, each checked; the connection is pinned to them."""
        host = u.host
        port = u.port or _DEFAULT_PORTS[u.scheme]
        try:
            found = await self._resolve_host(host, port)
        except (OSError, UnicodeError):  # socket.gaierror is an OSError
            raise UrlFetchFailed(f"cannot resolve host '{host}'", {"host": host}) from None
        addresses = list(dict.fromkeys(found))
        if not addresses:
            raise UrlFetchFailed(f"cannot resolve host '{host}'", {"host": host})
        for a in addresses:
            try:
                ip = ipaddress.ip_address(a.split("%", 1)[0])  # drop an IPv6 scope id
            except ValueError:
                raise UrlFetchFailed(f"host '{host}' resolved to an invalid address",
                                     {"host": host}) from None
            ip = embedded_ipv4(ip) or ip
            if not self.s.urls.allow_private and (not ip.is_global or ip.is_multicast):
                raise UrlFetchFailed(
                    f"URL host '{host}' resolves to a non-public address; refused",
                    {"host": host})
        return addresses

    async def _get(self, u: httpx.URL, addresses: list[str], field: str) -> bytes | httpx.URL:
        """GET ``u`` from the first of ``addresses`` that accepts a connection:
        the body, or the URL a redirect points to."""
        headers = {"Host": u.netloc.decode("ascii")}
        extensions = {"sni_hostname": u.host} if u.scheme == "https" else {}
        limit = self.s.images.max_bytes
        for i, address in enumerate(addresses):
            try:
                async with self._client.stream("GET", u.copy_with(host=address), headers=headers,
                                               extensions=extensions) as resp:
                    if resp.status_code in _REDIRECTS and resp.headers.get("location"):
                        return u.join(resp.headers["location"])
                    if resp.status_code != 200:
                        raise UrlFetchFailed(
                            f"fetching '{field}' URL returned HTTP {resp.status_code}",
                            {"field": field, "status": resp.status_code})
                    encoding = resp.headers.get("content-encoding", "identity").lower()
                    if encoding not in ("", "identity"):
                        # asked for identity; decoding a compressed body would let a
                        # few KB inflate past the cap in one step (a decompression bomb)
                        raise UrlFetchFailed(f"'{field}' URL answered with Content-Encoding "
                                             f"'{encoding}'; images are fetched uncompressed",
                                             {"field": field})
                    declared = resp.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > limit:
                        raise ImageTooLarge(f"'{field}' URL content is {declared} bytes; "
                                            f"limit {limit}", {"field": field, "max_bytes": limit})
                    body = bytearray()
                    async for chunk in resp.aiter_raw():
                        if len(body) + len(chunk) > limit:
                            raise ImageTooLarge(f"'{field}' URL content exceeds {limit} bytes",
                                                {"field": field, "max_bytes": limit})
                        body += chunk
                    return bytes(body)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                if i + 1 < len(addresses):
                    continue  # another address of the same host may answer
                raise UrlFetchFailed(f"cannot connect to '{field}' URL host",
                                     {"field": field, "host": u.host}) from None
            except httpx.TimeoutException:
                raise UrlFetchFailed(f"fetching '{field}' URL timed out",
                                     {"field": field}) from None
            except httpx.HTTPError as exc:
                raise UrlFetchFailed(f"fetching '{field}' URL failed: {type(exc).__name__}",
                                     {"field": field}) from None
        raise UrlFetchFailed(f"cannot resolve host '{u.host}'", {"host": u.host})

    async def aclose(self) -> None:
        await self._client.aclose()


def decode_base64(text: str) -> bytes:
    """Standard or URL-safe base64, with or without padding and line breaks.

    Decoded in slices: each call holds the GIL, and a 27 MB string in one call
    would keep the event loop thread waiting; between slices the GIL is handed
    over. Slices without whitespace (the usual case) are not copied to strip it.
    """
    altchars = b"-_" if ("-" in text or "_" in text) else None
    out = bytearray()
    carry = ""
    padded = False
    for start in range(0, len(text), _B64_SLICE):
        raw = text[start:start + _B64_SLICE]
        piece = carry + raw
        if padded and piece.strip():
            # padding belongs at the very end; checked here because each slice
            # is validated on its own
            raise binascii.Error("data after base64 padding")
        cut = len(piece) - len(piece) % 4
        try:
            out += base64.b64decode(piece[:cut], altchars=altchars, validate=True)
        except binascii.Error:
            # whitespace (MIME line breaks) or bad data: strip and decode again,
            # which raises on bad data; the usual slice, without any, is not copied
            piece = carry + "".join(raw.split())
            cut = len(piece) - len(piece) % 4
            out += base64.b64decode(piece[:cut], altchars=altchars, validate=True)
        padded = "=" in piece[:cut]
        carry = piece[cut:]
        if start + _B64_SLICE < len(text):
            # hand the GIL over now: a waiting event loop otherwise gets it only
            # at the next forced switch (5 ms)
            time.sleep(0)
    if carry:
        out += base64.b64decode(carry + "=" * (-len(carry) % 4), altchars=altchars,
                                validate=True)
    return bytes(out)
