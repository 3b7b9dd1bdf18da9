"""MobileFaceNet-512 (``mfn512``) and the dynamic-batch copies of the faceplugin models:
the copy against the shipped file on real faces, its files (pinned sha256, sidecar,
repair of a damaged copy) and its input convention.

The model files are the ones ``python -m pipelines.install.prepare`` fetched and converted
into ``data/models``; tests that damage files work on copies in a temp directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench.evaluate import LFW
from pipelines.errors import ErrorCode, ModelNotInstalled, ValidationError
from configs.settings import ImageLimits, Runtime
from pipelines.embed_mfn512 import ASSET, CHIP, FLUSH_BELOW, Mfn512Embedder, preprocess
from pipelines.install import npm_assets, onnx_rebatch
from pipelines.model_check import (ModelVerificationFailed, reference_path, sidecar_path,
                                   verify_reference)
from pipelines.models import ModelContext
from pipelines.runtime import onnx_session
from pipelines.stages import DetectionStage, DetectRequest

MODELS = Path("data/models")


@pytest.fixture(scope="module")
def mfn() -> Mfn512Embedder:
    # the converted file itself, as onnxruntime runs it in float32: what these tests
    # check is the conversion (OpenVINO and bfloat16 are tested in test_quantized)
    emb = Mfn512Embedder(ModelContext(models_dir=MODELS, runtime=Runtime(precision="fp32",
                                                                 engine="onnxruntime")))
    emb.load()
    return emb


@pytest.fixture(scope="module")
def detection() -> DetectionStage:
    return DetectionStage(ModelContext(models_dir=MODELS), ImageLimits())


@pytest.fixture(scope="module")
def chips(detection) -> np.ndarray:
    """warp5 chips of 16 different LFW people (the largest face of each photo)."""
    people = sorted(p for p in (LFW / "images").iterdir() if p.is_dir())[::180][:16]
    reqs = [DetectRequest(sorted(p.glob("*.jpg"))[0].read_bytes(), "blazeface",
                          chip_specs=(CHIP,)) for p in people]
    out = [r.chips[CHIP.key][0] for r in detection.run(reqs)]
    assert len(out) == 16
    return np.stack(out)


def test_copy_is_bit_identical_to_the_shipped_file_on_real_faces(mfn, chips):
    shipped = onnx_session(str(mfn.source_path), Runtime())
    x = preprocess(chips)
    ref = np.concatenate([shipped.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    assert np.array_equal(mfn.embed_raw(chips), ref)
    # the whole batch in one call (as on a GPU) gives the same rows
    together = mfn.session.run(None, {"input": x})[0]
    assert np.abs(together - ref).max() < 1e-5 * np.abs(ref).max()


def test_the_copy_zeroed_only_tiny_weights_and_says_so():
    meta = json.loads(sidecar_path(MODELS / "mfn512.onnx").read_text())
    assert meta["source_sha256"] == ASSET.sha256
    assert meta["flush_below"] == FLUSH_BELOW and meta["weights_flushed"] > 8938
    assert meta["input"]["shape"][0] == "N" and meta["max_abs_error_vs_source"] == 0.0


def test_batched_unit_vectors(mfn, chips):
    vecs = mfn.embed(chips)
    assert vecs.shape == (16, 512) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    sims = vecs @ vecs.T  # different people are not the same vector
    assert sims[~np.eye(16, dtype=bool)].max() < 0.7
    assert mfn.embed(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 512)
    with pytest.raises(ValidationError):
        mfn.embed(chips[:, :100, :100])


def test_input_is_bgr_channels_first_scaled():
    rgb = np.zeros((1, 112, 112, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    x = preprocess(rgb)
    assert x.shape == (1, 3, 112, 112) and x.dtype == np.float32
    assert np.allclose(x[0, 2], 128 / 128) and np.allclose(x[0, 0], -127 / 128)  # B, G, R


def test_same_person_closer_than_others(mfn, detection):
    a, b = sorted((LFW / "images" / "George_W_Bush").glob("*.jpg"))[:2]
    c = sorted((LFW / "images" / "Colin_Powell").glob("*.jpg"))[0]
    res = detection.run([DetectRequest(p.read_bytes(), "blazeface", chip_specs=(CHIP,))
                         for p in (a, b, c)])
    va, vb, vc = mfn.embed(np.stack([r.chips[CHIP.key][0] for r in res]))
    assert float(va @ vb) > 0.5 > float(va @ vc)


def test_damaged_copy_is_reconverted_on_load(tmp_path):
    shutil.copy(MODELS / ASSET.filename, tmp_path / ASSET.filename)
    emb = Mfn512Embedder(ModelContext(models_dir=tmp_path))
    emb.load()  # converts into the temp dir
    first = emb.onnx_path.read_bytes()
    ref = np.load(reference_path(emb.onnx_path))
    assert ref["input"].shape == (3, 3, 112, 112)
    # a copy whose reference no longer matches fails verification and is rebuilt
    with np.load(reference_path(emb.onnx_path)) as z:
        bad = {k: z[k] for k in z.files}
    bad["out_0"] = bad["out_0"] + 1.0
    np.savez(reference_path(emb.onnx_path), **bad)
    with pytest.raises(ModelVerificationFailed):
        verify_reference(onnx_session(str(emb.onnx_path), Runtime()),
                         emb.onnx_path, "mfn512")
    again = Mfn512Embedder(ModelContext(models_dir=tmp_path))
    again.load()
    assert again.onnx_path.read_bytes() == first


def test_wrong_source_is_refused(tmp_path):
    data = bytearray((MODELS / ASSET.filename).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / ASSET.filename).write_bytes(bytes(data))
    with pytest.raises(npm_assets.AssetVerificationFailed) as exc:
        Mfn512Embedder(ModelContext(models_dir=tmp_path)).load()
    assert exc.value.code == ErrorCode.MODEL_NOT_INSTALLED
    assert "faceplugin-face-recognition-js@0.0.1" in exc.value.message
    assert not (tmp_path / "mfn512.onnx").exists()  # nothing converted from it


def test_missing_source_names_the_file_and_the_command(tmp_path):
    with pytest.raises(ModelNotInstalled) as exc:
        Mfn512Embedder(ModelContext(models_dir=tmp_path)).load()
    assert exc.value.details["missing_file"] == str(tmp_path / ASSET.filename)
    assert "python -m pipelines.install.prepare" in exc.value.message


def test_a_copy_that_is_not_bit_identical_is_never_written(tmp_path):
    """Zeroing weights that do reach the output breaks bit-identity: refused."""
    with pytest.raises(ModelVerificationFailed, match="not bit-identical"):
        onnx_rebatch.convert(MODELS / ASSET.filename, tmp_path / "x.onnx", "mfn512",
                             flush_below=1e-2)
    assert not (tmp_path / "x.onnx").exists()
