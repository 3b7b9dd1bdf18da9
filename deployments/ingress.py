"""The HTTP ingress deployment: FastAPI under ``@serve.ingress``.

It authenticates, tags every request with an id, parses JSON or multipart
bodies, resolves image fields to bytes, and composes the model deployments
(detect -> embed / analyze) and the gallery. It holds no model and no gallery
state; domain errors raised anywhere are mapped to HTTP in
``deployments/errors.py``. Route groups live in their own modules as mixins.
"""

# No `from __future__ import annotations`: FastAPI must resolve the route
# signatures of the class-based ingress at decoration time.
import json
import logging
from typing import Any

from ray import cloudpickle, serve

from configs.settings import Settings
from deployments import compat_api, faces_api, gallery_api
from deployments.compat_api import CompatApi
from deployments.faces_api import FacesApi
from deployments.gallery_api import GalleryApi
from deployments.http_app import app
from deployments.images import ImageResolver

log = logging.getLogger("facefleet.ingress")

# Serve rewrites the route methods' signatures (to inject the replica instance)
# and then pickles the app. Methods of importable mixin classes would be pickled
# by reference and lose that rewrite, so their modules are pickled by value.
for _module in (faces_api, gallery_api, compat_api):
    cloudpickle.register_pickle_by_value(_module)


@serve.deployment(name="Ingress", max_ongoing_requests=128, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(app)
class Ingress(FacesApi, GalleryApi, CompatApi):
    def __init__(self, settings: dict[str, Any], detector, embedder, analyzer,
                 gallery=None, fused: bool = False) -> None:
        self.s = Settings(**settings)
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        app.state.api_key_sha256 = [k.lower() for k in self.s.api_key_sha256]
        self._local = None
        if fused:  # all model stages in this replica (topology: fused)
            from deployments.models import LocalHandle, LocalPipeline

            self._local = LocalPipeline(settings)
            detector = embedder = analyzer = LocalHandle(self._local)
        self.detector, self.embedder, self.analyzer, self.gallery = detector, embedder, analyzer, gallery
        self.images = ImageResolver(self.s)
        self._embed_info: dict[str, dict] = {}
        self._attr_info: dict[str, dict] = {}

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Rotate API keys without a restart (``user_config: {api_key_sha256: [...]}``);
        with ``topology: fused`` also the batch knobs of the in-replica models."""
        if self._local is not None and "max_batch_size" in user_config:
            self._local.reconfigure(user_config)
        keys = user_config.get("api_key_sha256", self.s.api_key_sha256) or []
        app.state.api_key_sha256 = [str(k).lower() for k in keys]
        log.info(json.dumps({"event": "auth", "api_keys": len(keys)}))
