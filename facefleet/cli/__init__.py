"""The ``facefleet`` command line: enroll a folder of people, identify, verify, detect,
list and update what is enrolled, export and import collections; manage API keys and
read the audit trail.

A thin layer over :mod:`facefleet.client` and :mod:`facefleet.enroll`: it
parses options (server from ``--url`` / ``FACEFLEET_URL``, key from
``--api-key`` / ``FACEFLEET_API_KEY``), calls the service and hands results
to :class:`facefleet.output.Output`. Exit codes: 0 success; 1 the answer is
"no" or some inputs failed (``verify`` of two different people, an
``identify`` image that could not be read, ``enroll --fail-on-error`` with
failures); 2 usage errors and failures to talk to the service.
"""

from facefleet.cli import admin, faces, gallery  # noqa: F401  (each registers its commands)
from facefleet.cli.base import main

__all__ = ["main"]
