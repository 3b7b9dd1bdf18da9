"""Model deployments: Detector, Embedder, Analyzer, and the same stages fused in-process.

Each is a thin adapter over ``pipelines.stages`` and one ``ModelCache`` per
replica (``model_info`` answers for any model of it): a ``@serve.batch`` method
gathers concurrent requests into one batch and runs the stage in a worker
thread, so the replica's event loop keeps accepting requests. The Embedder and
Analyzer take the Detector's result as it comes (a ``DeploymentResponse``
handed on by the ingress resolves to it), so detections go from stage to
stage directly. Batch size and wait come from ``user_config``
(``reconfigure``), replica counts and CPU/GPU shares from the deployment
options in ``serve_config.yaml``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

from ray import serve
from ray.serve.metrics import Histogram

from pipelines.errors import FacefleetError
from configs.settings import Settings
import pipelines.install  # noqa: F401 - registers the converters: a replica heals a damaged model file at load
from deployments.metrics import ProcessMetrics
from pipelines.models import ModelContext, ModelTask
from pipelines.runtime import limit_native_threads
from pipelines.stages import (AnalysisStage, AnalyzeRequest, DetectionStage, DetectRequest,
                              EmbeddingStage, EmbedRequest, ModelCache)

log = logging.getLogger("facefleet.models")

_BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128]


def context_from(s: Settings) -> ModelContext:
    return ModelContext(models_dir=s.models_path, deepface_home=s.deepface_home,
                        runtime=s.runtime, model_pack=s.model_pack,
                        fusion_weights=s.fusion_weights,
                        anti_spoofing_model=s.anti_spoofing_model)


@contextlib.contextmanager
def _naming_this_node() -> Iterator[None]:
    """A model missing here fails the replica's start naming this node: on a cluster
    every node that may run a model replica needs the models in its ``model_dir``."""
    try:
        yield
    except FacefleetError as exc:
        import ray

        node = ray.get_runtime_context().get_node_id()
        raise RuntimeError(f"on node {ray.util.get_node_ip_address()} (node id {node}): "
                           f"{exc.message}") from exc


def _prepare(settings: dict[str, Any]) -> Settings:
    # validated once in build_app; a replica only rebuilds the object from its dump
    s = Settings.model_validate(settings)
    limit_native_threads(max(s.runtime.intra_op_threads, 1))
    return s


async def _in_thread(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class _Batching:
    """Batch knobs from user_config and batch-size observability."""

    _methods: tuple[str, ...] = ()

    def _init_metrics(self, name: str, metrics: ProcessMetrics | None = None) -> None:
        """``metrics``: the registry of the replica these stages run in (fused: the
        Ingress's); None in a model deployment, which then reports its own."""
        self._name = name
        self._sizes: dict[str, Counter] = {m: Counter() for m in self._methods}
        self._hist = Histogram("facefleet_batch_size", description="requests per model batch",
                               boundaries=_BATCH_BUCKETS, tag_keys=("method",))
        if metrics is None:
            from deployments.serve.metrics_board import Reporter, replica_metrics

            metrics = replica_metrics()
            self._reporter = Reporter(metrics)
        self._batches = metrics.batches(self._methods)

    def _observe(self, method: str, n: int) -> None:
        self._sizes[method][n] += 1
        self._hist.observe(n, tags={"method": method})
        self._batches.observe(method, n)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        size = int(user_config.get("max_batch_size", 16))
        wait = float(user_config.get("batch_wait_timeout_s", 0.005))
        for m in self._methods:
            fn = getattr(self, m)
            fn.set_max_batch_size(size)
            fn.set_batch_wait_timeout_s(wait)
        log.info("%s batching: max_batch_size=%d wait=%.3fs", self._name, size, wait)

    def _init_models(self, s: Settings) -> None:
        """One model cache for every stage of this replica (fused: all three)."""
        if getattr(self, "models", None) is None:
            self.models = ModelCache(context_from(s))

    async def model_info(self, task: str, name: str) -> dict[str, Any] | FacefleetError:
        """``InferenceModel.info`` of a model of this replica (loaded if need be), or
        the error that loading it raised."""
        try:
            return await _in_thread(self.models.info, ModelTask(task), name)
        except FacefleetError as exc:
            return exc

    async def stats(self) -> dict[str, Any]:
        return {m: {str(k): v for k, v in sorted(c.items())} for m, c in self._sizes.items()}

    async def ready(self) -> bool:
        return True


class _DetectMixin(_Batching):
    def _init_detect(self, s: Settings) -> None:
        self._init_models(s)
        self.detect_stage = DetectionStage(self.models.ctx, s.images,
                                           preload=[s.default_detector], models=self.models)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def detect(self, requests: list[DetectRequest]) -> list[Any]:
        self._observe("detect", len(requests))
        return await _in_thread(self.detect_stage.run, requests)


class _EmbedMixin(_Batching):
    def _init_embed(self, s: Settings) -> None:
        self._init_models(s)
        self.embed_stage = EmbeddingStage(self.models.ctx, preload=[s.default_embedder],
                                          flip_average=s.flip_average, models=self.models)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def embed(self, detected: list[Any], models: list[str]) -> list[Any]:
        """Detected images (or their errors) -> embedded images (or errors)."""
        self._observe("embed", len(detected))
        return await _in_thread(self.embed_stage.run_detected, detected, models)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def embed_chips(self, requests: list[EmbedRequest]) -> list[Any]:
        self._observe("embed_chips", len(requests))
        return await _in_thread(self.embed_stage.run, requests)

    async def embedder_info(self, name: str) -> dict[str, Any] | FacefleetError:
        return await self.model_info(ModelTask.EMBED, name)


class _AnalyzeMixin(_Batching):
    def _init_analyze(self, s: Settings) -> None:
        self._init_models(s)
        self.analyze_stage = AnalysisStage(self.models.ctx, preload=list(s.preload_actions),
                                           models=self.models)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def analyze(self, detected: list[Any], actions: list[tuple[str, ...]]) -> list[Any]:
        self._observe("analyze", len(detected))
        return await _in_thread(self.analyze_stage.run_detected, detected, actions)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def analyze_chips(self, requests: list[AnalyzeRequest]) -> list[Any]:
        self._observe("analyze_chips", len(requests))
        return await _in_thread(self.analyze_stage.run, requests)

    async def attribute_info(self, action: str) -> dict[str, Any] | FacefleetError:
        return await self.model_info(ModelTask.ATTRIBUTE, action)


@serve.deployment(name="Detector", max_ongoing_requests=64,
                  ray_actor_options={"num_cpus": 0.5})
class Detector(_DetectMixin):
    _methods = ("detect",)

    def __init__(self, settings: dict[str, Any]) -> None:
        s = _prepare(settings)
        self._init_metrics("Detector")
        with _naming_this_node():
            self._init_detect(s)


@serve.deployment(name="Embedder", max_ongoing_requests=64,
                  ray_actor_options={"num_cpus": 0.5})
class Embedder(_EmbedMixin):
    _methods = ("embed", "embed_chips")

    def __init__(self, settings: dict[str, Any]) -> None:
        s = _prepare(settings)
        self._init_metrics("Embedder")
        with _naming_this_node():
            self._init_embed(s)


@serve.deployment(name="Analyzer", max_ongoing_requests=64,
                  ray_actor_options={"num_cpus": 0.25})
class Analyzer(_AnalyzeMixin):
    _methods = ("analyze", "analyze_chips")

    def __init__(self, settings: dict[str, Any]) -> None:
        s = _prepare(settings)
        self._init_metrics("Analyzer")
        with _naming_this_node():
            self._init_analyze(s)


class LocalStages(_DetectMixin, _EmbedMixin, _AnalyzeMixin):
    """All three stages in the ingress replica itself (``topology: fused``).

    On a small machine every Serve hop costs CPU that the models need, so the
    fused topology runs the stages where the request already is. Batching
    still applies: concurrent requests meet in the same ``@serve.batch`` queues.
    """

    _methods = ("detect", "embed", "embed_chips", "analyze", "analyze_chips")

    def __init__(self, settings: dict[str, Any], metrics: ProcessMetrics) -> None:
        s = _prepare(settings)
        self._init_metrics("Ingress", metrics)
        with _naming_this_node():
            self._init_detect(s)
            self._init_embed(s)
            self._init_analyze(s)
