"""Turning an image field of a request into encoded bytes.

An image arrives as base64, a data URI, an http(s) URL, an uploaded multipart
file, or (only when a root is configured) a path under that root. URLs are
fetched with a timeout and a size cap enforced while streaming, and hosts that
resolve to loopback, private, link-local or reserved addresses are refused
unless the settings allow them. Decoding itself happens in the detector.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from configs.settings import Settings
from configs.errors import ImageDecodeError, ImageTooLarge, UrlFetchFailed, ValidationError

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,",
                       re.IGNORECASE)


class ImageResolver:
    """Resolves request image values to bytes according to the settings."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.urls.timeout_s), follow_redirects=False,
            headers={"User-Agent": "facefleet/0.1"})

    async def resolve(self, value: str | bytes, field: str = "img") -> bytes:
        if isinstance(value, bytes):
            return self._check_size(value)
        if not isinstance(value, str) or not value.strip():
            raise ValidationError(f"'{field}' must be a non-empty image string or file",
                                  {"field": field})
        v = value.strip()
        m = _DATA_URI.match(v)
        if m:
            return self._b64(v[m.end():], field)
        low = v[:8].lower()
        if low.startswith("http://") or low.startswith("https://"):
            return await self._fetch(v, field)
        if self.s.file_root is not None and (v.startswith("/") or v.startswith("./")):
            return self._file(v, field)
        return self._b64(v, field)

    def _check_size(self, data: bytes) -> bytes:
        if len(data) > self.s.images.max_bytes:
            raise ImageTooLarge(f"image is {len(data)} bytes; the limit is {self.s.images.max_bytes}",
                                {"bytes": len(data), "max_bytes": self.s.images.max_bytes})
        return data

    def _b64(self, text: str, field: str) -> bytes:
        # base64 inflates by 4/3: refuse oversized strings before decoding them
        if len(text) > self.s.images.max_bytes * 4 // 3 + 8:
            raise ImageTooLarge(f"'{field}' is larger than {self.s.images.max_bytes} bytes",
                                {"field": field, "max_bytes": self.s.images.max_bytes})
        try:
            cleaned = "".join(text.split())
            cleaned += "=" * (-len(cleaned) % 4)
            data = base64.b64decode(cleaned, altchars=b"-_" if "-" in cleaned or "_" in cleaned
                                    else None, validate=True)
        except (binascii.Error, ValueError):
            raise ImageDecodeError(
                f"'{field}' is neither base64 image data, a data URI nor an http(s) URL",
                {"field": field}) from None
        if not data:
            raise ImageDecodeError(f"'{field}' is empty", {"field": field})
        return self._check_size(data)

    def _file(self, path: str, field: str) -> bytes:
        root = Path(self.s.file_root).resolve()  # type: ignore[arg-type]
        target = (root / path.lstrip("/")).resolve() if path.startswith("./") else Path(path).resolve()
        if root not in target.parents and target != root:
            raise ValidationError(f"'{field}' path is outside the allowed image root",
                                  {"field": field})
        if not target.is_file():
            raise ValidationError(f"'{field}' file does not exist", {"field": field})
        if target.stat().st_size > self.s.images.max_bytes:
            raise ImageTooLarge(f"'{field}' file is larger than {self.s.images.max_bytes} bytes")
        return target.read_bytes()

    async def _fetch(self, url: str, field: str) -> bytes:
        if not self.s.urls.enabled:
            raise ValidationError("image URLs are disabled on this server", {"field": field})
        parts = urlsplit(url)
        host = parts.hostname
        if not host:
            raise UrlFetchFailed(f"'{field}' URL has no host", {"field": field})
        if not self.s.urls.allow_private:
            await self._check_public(host, parts.port or (443 if parts.scheme == "https" else 80))
        limit = self.s.images.max_bytes
        try:
            async with self._client.stream("GET", url) as resp:
                if resp.status_code != 200:
                    raise UrlFetchFailed(f"fetching '{field}' URL returned HTTP {resp.status_code}",
                                         {"field": field, "status": resp.status_code})
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limit:
                    raise ImageTooLarge(f"'{field}' URL content is {declared} bytes; limit {limit}")
                chunks, size = [], 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise ImageTooLarge(f"'{field}' URL content exceeds {limit} bytes")
                    chunks.append(chunk)
        except httpx.TimeoutException:
            raise UrlFetchFailed(f"fetching '{field}' URL timed out", {"field": field}) from None
        except httpx.HTTPError as exc:
            raise UrlFetchFailed(f"fetching '{field}' URL failed: {type(exc).__name__}",
                                 {"field": field}) from None
        return b"".join(chunks)

    async def _check_public(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            raise UrlFetchFailed(f"cannot resolve host '{host}'", {"host": host}) from None
        for info in infos:
            ip = ipaddress.ip_address(info[4][0])
            if not ip.is_global or ip.is_multicast:
                raise UrlFetchFailed(
                    f"URL host '{host}' resolves to a non-public address; refused",
                    {"host": host})

    async def aclose(self) -> None:
        await self._client.aclose()
