"""The request flow over real in-process backends (no Ray): the policy's checks run
before any model, and a warm identify is one gallery call.

The backends are the fused topology's own (``LocalStages`` with the real models)
and an in-process gallery over SQLite; each is wrapped to record which of its
operations a request reached.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pipelines.errors import ValidationError
from configs.settings import Settings
from deployments.serve.backends import LocalAnalyzer, LocalDetector, LocalEmbedder, LocalGallery
from deployments.metrics import ProcessMetrics
from index.gallery import GalleryService, LocalShards
from index.store import SqliteStore
from pipelines.flow import FaceQuery, Flow


class Recorded:
    """A backend whose every operation is recorded, then run by the real one."""

    def __init__(self, backend: Any, calls: list[str]) -> None:
        self._backend, self._calls = backend, calls

    def __getattr__(self, name: str) -> Any:  # a test probe, not a contract
        attr = getattr(self._backend, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._calls.append(name)
            return attr(*args, **kwargs)

        return call


class Unbatched:
    """The fused topology's model stages called one request at a time: Serve's
    batching (``serve.batch``) needs a Serve replica, these tests run without Ray."""

    def __init__(self, stages: Any) -> None:
        self.stages = stages

    async def detect(self, request: Any) -> Any:
        return (await asyncio.to_thread(self.stages.detect_stage.run, [request]))[0]

    async def embed(self, detected: Any, model: str) -> Any:
        return (await asyncio.to_thread(self.stages.embed_stage.run_detected, [detected],
                                        [model]))[0]

    async def embed_chips(self, request: Any) -> Any:
        return (await asyncio.to_thread(self.stages.embed_stage.run, [request]))[0]

    async def analyze(self, detected: Any, actions: tuple[str, ...]) -> Any:
        return (await asyncio.to_thread(self.stages.analyze_stage.run_detected, [detected],
                                        [actions]))[0]

    async def analyze_chips(self, request: Any) -> Any:
        return (await asyncio.to_thread(self.stages.analyze_stage.run, [request]))[0]

    async def embedder_info(self, name: str) -> Any:
        return await self.stages.embedder_info(name)

    async def attribute_info(self, action: str) -> Any:
        return await self.stages.attribute_info(action)

    async def ready(self) -> bool:
        return True

    async def stats(self) -> dict[str, Any]:
        return {}


@pytest.fixture(scope="module")
def stages() -> Any:
    from deployments.serve.models import LocalStages

    s = Settings()
    return Unbatched(LocalStages(s.model_dump(mode="json"),
                                 ProcessMetrics({"deployment": "Ingress", "replica": "test"})))


def _flow(stages: Any, tmp_path: Path, calls: dict[str, list[str]], **settings: Any) -> Flow:
    s = Settings(**settings)
    store = SqliteStore(tmp_path / "g.sqlite3")
    gallery = LocalGallery(GalleryService(store, LocalShards(store, 1)))
    return Flow(s, Recorded(LocalDetector(stages), calls.setdefault("detector", [])),
                Recorded(LocalEmbedder(stages), calls.setdefault("embedder", [])),
                Recorded(LocalAnalyzer(stages), calls.setdefault("analyzer", [])),
                Recorded(gallery, calls.setdefault("gallery", [])))


def test_identify_without_a_calibrated_threshold_fails_before_any_model_runs(
        stages, tmp_path, faces):
    calls: dict[str, list[str]] = {}
    flow = _flow(stages, tmp_path, calls, identify_thresholds={})
    data = (faces / "deepface" / "img1.jpg").read_bytes()

    async def run() -> None:
        model = flow.policy.default_embedder
        dim = int((await flow.embedder_info(model))["dim"])
        await flow.gallery.create_collection("people", model, dim)
        calls["detector"].clear(), calls["embedder"].clear()
        with pytest.raises(ValidationError, match="no calibrated identify threshold"):
            await flow.identify("people", data, FaceQuery(), 5)
        assert calls["detector"] == [] and calls["embedder"] == []
        assert "identify_embedded" not in calls["gallery"]
        # with a threshold of its own, the same request runs
        res, threshold = await flow.identify("people", data, FaceQuery(), 5, threshold=0.5)
        assert threshold == 0.5 and res.faces and res.faces[0].hits == []
        assert calls["detector"] == ["detect"] and calls["embedder"] == ["embed"]

    asyncio.run(run())


def test_a_warm_identify_is_one_gallery_call_and_answers_boxes_not_vectors(
        stages, tmp_path, faces):
    calls: dict[str, list[str]] = {}
    flow = _flow(stages, tmp_path, calls)
    data = (faces / "deepface" / "img1.jpg").read_bytes()

    async def run() -> None:
        reg = await flow.register("people", [(data, {"person_id": "p1"})], FaceQuery())
        assert reg.collection_created and reg.results[0]["person_id"] == "p1"
        await flow.identify("people", data, FaceQuery(), 3)  # cold or warm: either way
        calls["gallery"].clear()
        res, threshold = await flow.identify("people", data, FaceQuery(), 3)
        assert calls["gallery"] == ["identify_embedded"]
        face = res.faces[0]
        assert set(face.box) == {"x", "y", "w", "h"} and 0.0 < face.confidence <= 1.0
        assert face.hits[0]["person_id"] == "p1" and face.hits[0]["distance"] < threshold
        assert res.model == flow.policy.default_embedder
        assert not hasattr(res, "vectors") and not hasattr(face, "landmarks")

    asyncio.run(run())


def test_deepface_register_and_search_with_anti_spoofing_send_no_chips_back(
        stages, tmp_path, faces):
    """One detection goes to the liveness model and then to the embedder, whose
    reference goes to the gallery: nothing is cut, embedded or analysed from the
    ingress (``*_chips``), and a spoof enrols nothing."""
    from bench.faceplugin import upright_spoof_frames
    from pipelines.errors import SpoofDetected
    from pipelines.flow.deepface import DeepfaceFlow

    calls: dict[str, list[str]] = {}
    flow = _flow(stages, tmp_path, calls)
    df = DeepfaceFlow(flow)
    genuine = (faces / "deepface" / "img1.jpg").read_bytes()
    spoof = upright_spoof_frames()["image_F1"]
    model = flow.policy.default_embedder

    async def run() -> None:
        written = await df.register("df", genuine, model, FaceQuery("blazeface"), True,
                                    {"person_id": "p1", "name": "img1"})
        assert [f["person_id"] for f in written] == ["p1"] and "box" not in written[0]
        res, detector = await df.search("df", genuine, model, FaceQuery("blazeface"), True,
                                        5, None)
        assert detector == "blazeface" and res.faces[0].hits[0]["person_id"] == "p1"
        assert set(res.faces[0].box) == {"x", "y", "w", "h"}
        stage_calls = {k: [c for c in v if c != "info"] for k, v in calls.items()}
        assert stage_calls["detector"] == ["detect"] * 2
        assert stage_calls["analyzer"] == ["analyze"] * 2  # no analyze_chips
        assert stage_calls["embedder"] == ["embed"] * 2  # no embed_chips
        with pytest.raises(SpoofDetected):
            await df.register("df", spoof, model, FaceQuery("blazeface"), True,
                              {"person_id": "p2", "name": "spoof"})
        assert (await flow.gallery.stats("df"))["faces"] == 1

    asyncio.run(run())
