"""Serve configs, the KubeRay manifest and the GPU image stay valid and in sync."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from configs.settings import Settings
from deployments.app import AppArgs

REPO = Path(__file__).resolve().parent.parent.parent
MODEL_DEPLOYMENTS = {"Detector", "Embedder", "Analyzer"}


def _load(path: Path) -> ServeDeploySchema:
    return ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))


def _check_app(schema: ServeDeploySchema) -> dict[str, object]:
    (app,) = schema.applications
    assert app.import_path == "deployments.app:build_app"
    args = AppArgs.model_validate(app.args)
    Settings(**args.settings)  # the settings block is valid
    return {d.name: d for d in app.deployments}


def test_local_serve_config_is_loopback_cpu():
    schema = _load(REPO / "serve_config.yaml")
    assert schema.http_options.host == "127.0.0.1" and schema.http_options.port == 8000
    deps = _check_app(schema)
    assert MODEL_DEPLOYMENTS | {"Ingress", "Gallery"} <= set(deps)
    for name in MODEL_DEPLOYMENTS:
        assert not deps[name].ray_actor_options.num_gpus
        assert deps[name].user_config["max_batch_size"] > 1
        # Serve caps a batch at max_ongoing_requests: leave room for full batches
        assert deps[name].max_ongoing_requests >= deps[name].user_config["max_batch_size"]


def test_gpu_serve_config_uses_gpus_and_bigger_batches():
    local = {d.name: d for d in _load(REPO / "serve_config.yaml").applications[0].deployments}
    schema = _load(REPO / "configs/serve_config.gpu.yaml")
    deps = _check_app(schema)
    args = AppArgs.model_validate(schema.applications[0].args)
    assert Settings(**args.settings).runtime.device == "cuda"
    for name in MODEL_DEPLOYMENTS:
        assert 0 < deps[name].ray_actor_options.num_gpus <= 1
        assert deps[name].user_config["max_batch_size"] > local[name].user_config["max_batch_size"]
        assert deps[name].autoscaling_config["max_replicas"] > 1


def test_rayservice_manifest_embeds_the_gpu_config():
    m = yaml.safe_load((REPO / "configs/rayservice.yaml").read_text())
    assert m["apiVersion"] == "ray.io/v1" and m["kind"] == "RayService"
    assert m["metadata"]["name"]
    spec = m["spec"]
    embedded = yaml.safe_load(spec["serveConfigV2"])
    assert embedded == yaml.safe_load((REPO / "configs/serve_config.gpu.yaml").read_text())
    ServeDeploySchema.model_validate(embedded)
    cluster = spec["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert "rayStartParams" in head and head["template"]["spec"]["containers"][0]["image"]
    workers = cluster["workerGroupSpecs"]
    assert workers and all("groupName" in w and "rayStartParams" in w for w in workers)
    gpu = workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == "1"
    assert cluster["rayVersion"] == "2.60.0"


def test_gpu_image_swaps_in_gpu_runtimes_and_bakes_models():
    text = (REPO / "Dockerfile.gpu").read_text()
    assert "FROM nvidia/cuda:" in text
    assert "pip uninstall -y faiss-cpu onnxruntime" in text
    # the image installs exactly the pyproject's gpu extra (CUDA 13 libraries included)
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    gpu = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["gpu"]
    assert any(r.startswith("onnxruntime-gpu[cuda,cudnn]==") for r in gpu)
    for req in gpu:
        assert f'"{req}"' in text, req
    assert "python -m pipelines.install.prepare" in text
    for path in ("configs", "pipelines", "index", "deployments"):
        assert f"COPY {path} ./{path}" in text


def test_fused_serve_config_puts_models_in_the_ingress():
    schema = _load(REPO / "configs/serve_config.fused.yaml")
    deps = _check_app(schema)
    assert AppArgs.model_validate(schema.applications[0].args).topology == "fused"
    assert set(deps) == {"Ingress", "Gallery"}
    assert deps["Ingress"].user_config["max_batch_size"] > 1
