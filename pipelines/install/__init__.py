"""Install-time model code: fetching pinned files, converting them, preparing the pack.

Nothing request-time imports this package (``pipelines.model_check`` only
reads and verifies what it writes). Importing it registers its converters
with ``pipelines.model_check``, so that a process that may convert (the
install command, the Serve model replicas) heals a missing, stale or damaged
converted file at load; each converter module is imported only when a
conversion is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.model_check import register_converter


def _tflite(source: Path, out: Path, name: str, force: bool = False) -> None:
    from pipelines.install import tflite_onnx

    tflite_onnx.ensure_converted(source, out, name, force=force)


def _rebatch(source: Path, out: Path, name: str, force: bool = False,
             **options: Any) -> None:
    from pipelines.install import onnx_rebatch

    onnx_rebatch.ensure_converted(source, out, name, options.get("flush_below", 0.0),
                                  force=force)


def _dlib(source: Path, out: Path, name: str, force: bool = False) -> None:
    from pipelines.install import dlib_convert

    dlib_convert.ensure_converted(source, out, name, force=force)


def _int8(source: Path, out: Path, name: str, force: bool = False, **options: Any) -> None:
    from pipelines.install import quantize

    quantize.ensure_converted(source, out, name, force=force, **options)


def _fp16(source: Path, out: Path, name: str, force: bool = False, **options: Any) -> None:
    from pipelines.install import fp16

    fp16.ensure_converted(source, out, name, force=force, **options)


register_converter("tflite", _tflite)
register_converter("rebatch", _rebatch)
register_converter("dlib", _dlib)
register_converter("int8", _int8)
register_converter("fp16", _fp16)
