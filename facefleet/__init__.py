"""facefleet client package: a typed Python client and the ``facefleet`` command line.

``Client`` / ``AsyncClient`` wrap the whole HTTP API of a facefleet service;
``facefleet.errors`` holds the exceptions they raise; the command line lives
in ``facefleet.cli``. The service itself is in ``deployments/`` and does not
import this package.
"""

from importlib.metadata import PackageNotFoundError, version

from facefleet.async_client import AsyncClient
from facefleet.calls import UNSET, EnrollItem, RetryPolicy
from facefleet.client import Client
from facefleet.errors import ApiError, FacefleetError, NoFaceDetected, TransportError

try:
    __version__ = version("facefleet")
except PackageNotFoundError:  # running from a source checkout that was not installed
    __version__ = "0+unknown"

__all__ = ["UNSET", "ApiError", "AsyncClient", "Client", "EnrollItem", "FacefleetError",
           "NoFaceDetected", "RetryPolicy", "TransportError"]
