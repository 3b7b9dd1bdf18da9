"""``python -m facefleet.cli``: the same as the ``facefleet`` command."""

from facefleet.cli import main

main()
