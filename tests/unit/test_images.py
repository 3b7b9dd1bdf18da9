"""Image fields of requests: base64, data URIs, file:// URIs under a root, and URL
fetches (pinned to the checked address, allowed ports, redirects checked hop by
hop, size cap) against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import gzip
import http.server
import os
import ssl
import threading
from pathlib import Path
from urllib.parse import quote

import pytest
import trustme

from configs.settings import Settings
from deployments.http.images import ImageResolver
from pipelines.errors import ImageDecodeError, ImageTooLarge, UrlFetchFailed, ValidationError


def resolve(settings: Settings, value, resolver=None, ssl_context=None) -> bytes:
    async def go():
        r = ImageResolver(settings, resolve_host=resolver, ssl_context=ssl_context)
        try:
            return await r.resolve(value)
        finally:
            await r.aclose()

    return asyncio.run(go())


class FakeDns:
    """An injected resolver: names -> addresses, recording every lookup."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table, self.asked = table, []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host not in self.table:
            raise OSError(f"no such host {host}")
        return self.table[host]


@pytest.fixture(scope="module")
def jpeg(faces) -> bytes:
    return (faces / "lfw-dev/images/AJ_Cook/AJ_Cook_0001.jpg").read_bytes()


class _Handler(http.server.SimpleHTTPRequestHandler):
    hosts: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).hosts.append(self.headers.get("Host", ""))
        # /hop/N/rest -> redirect N times, then /rest; /to?url -> redirect to url
        if self.path.startswith("/hop/"):
            _, _, n, rest = self.path.split("/", 3)
            target = f"/hop/{int(n) - 1}/{rest}" if int(n) > 1 else f"/{rest}"
            return self._redirect(target)
        if self.path.startswith("/to?"):
            return self._redirect(self.path[4:])
        if self.path == "/bomb":  # 20 KB of gzip that inflates to 20 MB
            body = gzip.compress(b"\0" * (20 << 20))
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return None
        return super().do_GET()

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def server(tmp_path_factory, jpeg):
    root = tmp_path_factory.mktemp("www")
    (root / "face.jpg").write_bytes(jpeg)
    (root / "big.bin").write_bytes(b"\xff" * (3 * 1024 * 1024))

    class Handler(_Handler):
        hosts: list[str] = []

        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, directory=str(root), **kw)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    httpd.hosts = Handler.hosts
    yield httpd
    httpd.shutdown()


def url_of(httpd, path: str, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{httpd.server_address[1]}{path}"


def open_to(httpd, **urls) -> Settings:
    """Settings that allow the test server: private addresses, its port."""
    return Settings(urls={"allow_private": True, "allowed_ports": [httpd.server_address[1]],
                          **urls}, images={"max_bytes": 2 * 1024 * 1024})


# ---------------------------------------------------------------------- base64
def test_base64_forms(jpeg):
    s = Settings()
    raw = base64.b64encode(jpeg).decode()
    assert resolve(s, raw) == jpeg
    assert resolve(s, "data:image/jpeg;base64," + raw) == jpeg
    assert resolve(s, "\n".join(raw[i:i + 76] for i in range(0, len(raw), 76))) == jpeg
    assert resolve(s, base64.urlsafe_b64encode(jpeg).decode().rstrip("=")) == jpeg


def test_large_base64_is_decoded_in_slices_off_the_loop(faces):
    photo = (faces / "deepface/img1.jpg").read_bytes()  # 2.3 MB: the worker-thread path
    raw = base64.b64encode(photo).decode()
    assert len(raw) > 256 * 1024
    assert resolve(Settings(), raw) == photo
    assert resolve(Settings(), "\r\n".join(raw[i:i + 76] for i in range(0, len(raw), 76))) == photo
    assert resolve(Settings(), base64.urlsafe_b64encode(photo).decode().rstrip("=")) == photo
    # padding in the middle is refused even when it falls on a slice boundary
    with pytest.raises(ImageDecodeError):
        resolve(Settings(), raw[:262140] + "QQ==" + raw[262144:])


def test_bad_strings():
    s = Settings()
    with pytest.raises(ImageDecodeError):
        resolve(s, "definitely not base64 !!!")
    with pytest.raises(ImageDecodeError):
        resolve(s, "QQ==QUJD")  # data after padding
    with pytest.raises(ValidationError):
        resolve(s, "   ")
    # a data URI header without its comma is not scanned to the end of a big string
    with pytest.raises(ImageDecodeError):
        resolve(s, "data:image/jpeg;" + "A" * (4 * 1024 * 1024))


def test_oversized_base64_is_refused_before_decoding():
    s = Settings(images={"max_bytes": 1000})
    with pytest.raises(ImageTooLarge):
        resolve(s, "A" * 5000)


# ---------------------------------------------------------------------- file URIs
@pytest.fixture()
def image_root(tmp_path: Path, jpeg) -> Path:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "face one.jpg").write_bytes(jpeg)
    (tmp_path / "out.jpg").write_bytes(jpeg)
    os.symlink(tmp_path / "out.jpg", tmp_path / "in" / "link.jpg")
    return tmp_path


def test_bare_base64_jpeg_is_never_taken_for_a_path(image_root, jpeg):
    raw = base64.b64encode(jpeg).decode()
    assert raw.startswith("/9j/")  # every JPEG's base64 looks like an absolute path
    assert resolve(Settings(file_root=image_root / "in"), raw) == jpeg
    # a bare path is no path either: it is (bad) base64
    with pytest.raises(ImageDecodeError):
        resolve(Settings(file_root=image_root / "in"), str(image_root / "in" / "face one.jpg"))


def test_file_uris_only_under_the_configured_root(image_root, jpeg):
    inside = "file://" + quote(str(image_root / "in" / "face one.jpg"))
    s = Settings(file_root=image_root / "in")
    assert resolve(s, inside) == jpeg
    assert resolve(s, inside.replace("file://", "file://localhost")) == jpeg
    refused = [
        "file://" + str(image_root / "out.jpg"),  # outside the root
        "file://" + str(image_root / "in" / ".." / "out.jpg"),  # traversal
        "file://" + str(image_root / "in" / "link.jpg"),  # a symlink leading out
        "file://" + str(image_root / "in" / "missing.jpg"),
        "file://" + str(image_root / "in"),  # a directory
        "file://otherhost" + str(image_root / "in" / "face one.jpg"),
        "file:relative.jpg",
        "file://" + str(image_root / "in" / "face%00one.jpg"),  # NUL byte
        inside + "?x=1",
    ]
    for uri in refused:
        with pytest.raises(ValidationError):
            resolve(s, uri)
    # off by default
    with pytest.raises(ValidationError) as exc:
        resolve(Settings(), inside)
    assert "file_root" in exc.value.message


def test_file_over_the_size_cap(image_root):
    s = Settings(file_root=image_root / "in", images={"max_bytes": 1000})
    with pytest.raises(ImageTooLarge):
        resolve(s, "file://" + quote(str(image_root / "in" / "face one.jpg")))


# ---------------------------------------------------------------------- URLs
def test_loopback_urls_are_refused_by_default(server):
    s = Settings(urls={"allowed_ports": [server.server_address[1]]})
    with pytest.raises(UrlFetchFailed) as exc:
        resolve(s, url_of(server, "/face.jpg"))
    assert "non-public" in exc.value.message
    for url in ("http://[::1]:80/face.jpg", "http://2130706433/face.jpg",
                "http://0.0.0.0/face.jpg"):
        with pytest.raises(UrlFetchFailed):
            resolve(Settings(), url)


def test_a_dns_name_resolving_to_loopback_is_refused(server):
    port = server.server_address[1]
    for answer in (["127.0.0.1"], ["93.184.216.34", "127.0.0.1"], ["::ffff:127.0.0.1"],
                   ["169.254.169.254"]):
        dns = FakeDns({"photos.example": answer})
        with pytest.raises(UrlFetchFailed) as exc:
            resolve(Settings(urls={"allowed_ports": [port]}),
                    url_of(server, "/face.jpg", "photos.example"), dns)
        assert "non-public" in exc.value.message
        assert dns.asked == ["photos.example"]


def test_the_fetch_connects_to_the_checked_address(server, jpeg):
    # "photos.example" exists only in the injected resolver: the fetch can only
    # succeed by connecting to the address that resolver gave, once
    dns = FakeDns({"photos.example": ["127.0.0.1"]})
    server.hosts.clear()
    got = resolve(open_to(server), url_of(server, "/face.jpg", "photos.example"), dns)
    assert got == jpeg
    assert dns.asked == ["photos.example"]
    assert server.hosts == [f"photos.example:{server.server_address[1]}"]


def test_https_is_pinned_with_the_host_name_for_sni_and_the_certificate(server, jpeg):
    # a TLS server on 127.0.0.1 with a certificate for photos.example only
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("photos.example").configure_cert(server_ctx)
    names: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: names.append(name)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), server.RequestHandlerClass)
    httpd.socket = server_ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        port = httpd.server_address[1]
        s = Settings(urls={"allow_private": True, "allowed_ports": [port]})
        dns = FakeDns({"photos.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]})
        got = resolve(s, f"https://photos.example:{port}/face.jpg", dns, client_ctx)
        assert got == jpeg and names == ["photos.example"]
        # the same address under a name the certificate does not carry: refused
        with pytest.raises(UrlFetchFailed):
            resolve(s, f"https://other.example:{port}/face.jpg", dns, client_ctx)
        assert names[-1] == "other.example"
    finally:
        httpd.shutdown()


def test_the_next_address_is_tried_when_one_refuses(server, jpeg):
    dns = FakeDns({"photos.example": ["127.0.0.2", "127.0.0.1"]})
    port = server.server_address[1]
    # 127.0.0.2 is loopback too, but nothing listens there on this port
    assert resolve(open_to(server), f"http://photos.example:{port}/face.jpg", dns) == jpeg


def test_only_allowed_ports(server):
    dns = FakeDns({"photos.example": ["93.184.216.34"]})
    with pytest.raises(UrlFetchFailed) as exc:
        resolve(Settings(), "http://photos.example:8080/face.jpg", dns)
    assert exc.value.details["port"] == 8080 and exc.value.details["allowed_ports"] == [80, 443]
    assert dns.asked == []  # refused before any lookup
    with pytest.raises(UrlFetchFailed):
        resolve(Settings(urls={"allow_private": True}), url_of(server, "/face.jpg"))


def test_redirects_are_followed_up_to_the_limit(server, jpeg):
    s = open_to(server, max_redirects=3)
    assert resolve(s, url_of(server, "/hop/3/face.jpg")) == jpeg
    with pytest.raises(UrlFetchFailed) as exc:
        resolve(s, url_of(server, "/hop/4/face.jpg"))
    assert "redirects more than 3" in exc.value.message
    with pytest.raises(UrlFetchFailed):
        resolve(open_to(server, max_redirects=0), url_of(server, "/hop/1/face.jpg"))


def test_every_redirect_target_is_checked(server, jpeg):
    port = server.server_address[1]
    s = open_to(server)
    # to another name: resolved (once) through the same resolver, and pinned
    dns = FakeDns({"a.example": ["127.0.0.1"], "b.example": ["127.0.0.1"]})
    server.hosts.clear()
    got = resolve(s, url_of(server, f"/to?http://b.example:{port}/face.jpg", "a.example"), dns)
    assert got == jpeg and dns.asked == ["a.example", "b.example"]
    assert server.hosts == [f"a.example:{port}", f"b.example:{port}"]
    refused = {
        f"/to?http://127.0.0.1:{port + 1}/face.jpg": "port",  # a port not allowed
        "/to?file:///etc/passwd": "scheme",
        "/to?ftp://127.0.0.1/face.jpg": "scheme",
        f"/to?http://nowhere.example:{port}/face.jpg": "resolve",
    }
    for path, why in refused.items():
        with pytest.raises(UrlFetchFailed) as exc:
            resolve(s, url_of(server, path, "a.example"), dns)
        assert why in exc.value.message


def test_size_cap_status_and_timeout(server):
    s = open_to(server)
    with pytest.raises(ImageTooLarge):
        resolve(s, url_of(server, "/big.bin"))
    with pytest.raises(UrlFetchFailed) as exc:
        resolve(s, url_of(server, "/missing.jpg"))
    assert exc.value.details["status"] == 404
    # a compressed answer is refused, not inflated past the cap
    with pytest.raises(UrlFetchFailed) as exc:
        resolve(s, url_of(server, "/bomb"))
    assert "Content-Encoding" in exc.value.message

    async def slow(host: str, port: int) -> list[str]:
        await asyncio.sleep(5)
        return ["127.0.0.1"]

    with pytest.raises(UrlFetchFailed) as exc:
        resolve(open_to(server, timeout_s=0.2), url_of(server, "/face.jpg", "slow.example"),
                slow)
    assert "timed out" in exc.value.message


def test_urls_can_be_disabled(server):
    with pytest.raises(ValidationError):
        resolve(Settings(urls={"enabled": False}), url_of(server, "/face.jpg"))


def test_ipv6_spellings_of_an_ipv4_address_are_judged_by_that_address(server):
    """NAT64, 6to4 and IPv4-compatible addresses reach the IPv4 address inside them:
    loopback or private inside is refused, a public one inside is not."""
    from deployments.http.images import embedded_ipv4

    port = server.server_address[1]
    for answer in ("64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b:1::7f00:1",
                   "2002:7f00:1::", "2002:a9fe:a9fe::", "::127.0.0.1", "::10.0.0.1"):
        dns = FakeDns({"photos.example": [answer]})
        with pytest.raises(UrlFetchFailed) as exc:
            resolve(Settings(urls={"allowed_ports": [port]}),
                    url_of(server, "/face.jpg", "photos.example"), dns)
        assert "non-public" in exc.value.message, answer
    for literal in ("http://[64:ff9b::7f00:1]/a.jpg", "http://[2002:7f00:1::]/a.jpg",
                    "http://[::127.0.0.1]/a.jpg"):
        with pytest.raises(UrlFetchFailed) as exc:
            resolve(Settings(), literal)
        assert "non-public" in exc.value.message, literal
    import ipaddress

    def e(a: str):
        return embedded_ipv4(ipaddress.ip_address(a))
    assert str(e("64:ff9b::808:808")) == str(e("2002:808:808::")) == "8.8.8.8"
    assert str(e("::ffff:127.0.0.1")) == str(e("::127.0.0.1")) == "127.0.0.1"
    assert e("::1") is None and e("2606:4700::1111") is None and e("8.8.8.8") is None
