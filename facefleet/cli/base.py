"""The ``facefleet`` command group, its connection options and the helpers its commands share."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from facefleet import __version__
from facefleet.async_client import AsyncClient
from facefleet.calls import DEFAULT_URL
from facefleet.client import Client
from facefleet.errors import ApiError, FacefleetError, TransportError
from facefleet.output import Output


F = TypeVar("F", bound=Callable[..., Any])


class Ctx:
    def __init__(self, url: str, api_key: str | None, as_json: bool, timeout: float) -> None:
        self.url = url
        self.api_key = api_key
        self.timeout = timeout
        self.out = Output(as_json)

    def client(self) -> Client:
        return Client(self.url, api_key=self.api_key, timeout=self.timeout)

    def async_client(self, connections: int) -> AsyncClient:
        return AsyncClient(self.url, api_key=self.api_key, timeout=self.timeout,
                           max_connections=connections)


def _connection_options(fn: F, *, top: bool) -> F:
    """``--url``, ``--api-key``, ``--json`` and ``--timeout``. On the group (``top``)
    they carry the environment and the defaults; on a command they are unset unless
    given, so ``facefleet --url U collections`` and ``facefleet collections --url U``
    mean the same, and one given after the command wins."""
    fn = click.option("--url", envvar="FACEFLEET_URL" if top else None,
                      default=DEFAULT_URL if top else None, show_default=top,
                      help="Service base URL (env FACEFLEET_URL).")(fn)
    fn = click.option("--api-key", envvar="FACEFLEET_API_KEY" if top else None, default=None,
                      help="API key (env FACEFLEET_API_KEY).")(fn)
    fn = click.option("--json", "as_json", is_flag=True,
                      help="Print one JSON document for scripts.")(fn)
    fn = click.option("--timeout", type=float, default=120.0 if top else None,
                      show_default=top, help="Seconds per request.")(fn)
    return fn


def common(fn: F) -> F:
    """Connection and output options, accepted by every command (after its name)
    as well as by ``facefleet`` itself (before it)."""

    @functools.wraps(fn)
    def wrapper(url: str | None, api_key: str | None, as_json: bool, timeout: float | None,
                **kw: Any) -> Any:
        top = click.get_current_context().find_root().params
        url = url or top.get("url") or DEFAULT_URL
        api_key = api_key or top.get("api_key")
        as_json = as_json or bool(top.get("as_json"))
        timeout = timeout if timeout is not None else top.get("timeout") or 120.0
        ctx = Ctx(url, api_key, as_json, timeout)
        try:
            return fn(ctx, **kw)
        except TransportError as exc:
            ctx.out.error(f"cannot reach facefleet at {url}: {exc}")
        except ApiError as exc:
            ctx.out.error(str(exc))
        except (FacefleetError, FileNotFoundError) as exc:
            ctx.out.error(str(exc))
        raise SystemExit(2)

    return _connection_options(wrapper, top=False)  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="facefleet")
@functools.partial(_connection_options, top=True)
def main(url: str, api_key: str | None, as_json: bool, timeout: float) -> None:
    """facefleet: enroll people from a folder, then identify and verify faces.

    --url, --api-key, --json and --timeout go before or after the command."""


def parse_labels(values: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"labels are KEY=VALUE, not {v!r}")
        labels[key] = value
    return labels
