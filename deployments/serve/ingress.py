"""The HTTP ingress deployment: one FastAPI app per replica over the request flow.

The replica builds its :class:`pipelines.flow.Flow` from the backends of its
topology (handles of the Detector, Embedder, Analyzer and Gallery
deployments, or, with ``topology: fused``, the model stages inside this very
replica), then Serve asks it for its ASGI app (``__serve_build_asgi_app__``),
which ``deployments.http.app.create_app`` builds. It holds no model (unless
fused) and no gallery state; it owns the replica's metrics registry, which it
reports to the application's metrics board (``deployments/serve/metrics_board.py``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ray import serve

from configs import keyhash
from configs.settings import Settings
from deployments.serve import replica_process
from deployments.serve.backends import (LocalAnalyzer, LocalDetector, LocalEmbedder, ServeAnalyzer,
                                  ServeDetector, ServeEmbedder, ServeGallery)
from deployments.http.auth import settings_keys_update
from deployments.http.app import create_app
from deployments.metrics import AppMetrics
from deployments.serve.metrics_board import Reporter, replica_metrics
from pipelines.flow import Flow

log = logging.getLogger("facefleet.ingress")


@serve.deployment(name="Ingress", max_ongoing_requests=128, ray_actor_options={"num_cpus": 0.25})
@serve.ingress()
class Ingress:
    def __init__(self, settings: dict[str, Any], detector: Any = None, embedder: Any = None,
                 analyzer: Any = None, gallery: Any = None) -> None:
        self.s = Settings.model_validate(settings)  # validated once, in build_app
        replica_process.check_message_limit(self.s.images.max_request_bytes)
        # this replica's metrics (HTTP, and the fused stages' batches), reported to
        # the board so that every Ingress replica's /metrics shows all replicas
        metrics = replica_metrics()
        self._reporter = Reporter(metrics)
        self._local = None
        if detector is None:  # topology: fused, every model stage in this replica
            from deployments.serve.models import LocalStages

            self._local = LocalStages(settings, metrics)
            backends = (LocalDetector(self._local), LocalEmbedder(self._local),
                        LocalAnalyzer(self._local))
        else:
            backends = (ServeDetector(detector), ServeEmbedder(embedder), ServeAnalyzer(analyzer))
        self.flow = Flow(self.s, *backends, ServeGallery(gallery) if gallery is not None else None)
        self._app = create_app(self.flow, self.s, AppMetrics(metrics, self._reporter.peers))

    def __serve_build_asgi_app__(self):
        return self._app

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Rotate the settings' admin keys without a restart
        (``user_config: {api_key_sha256: [...], auth_enabled?: bool}``);
        with ``topology: fused`` also the batch knobs of the in-replica models.

        An empty key list is refused unless ``auth_enabled: false`` comes with it
        (ValueError: Serve reports the update as failed, and a replica started
        afresh with that config fails to start), so keys are never turned off by
        omission (``deployments.http.auth.settings_keys_update``)."""
        if self._local is not None and "max_batch_size" in user_config:
            self._local.reconfigure(user_config)
        keys, enabled = settings_keys_update(user_config, self.s.api_key_sha256)
        auth = self._app.state.api.auth
        auth.set_settings_keys(keys, enabled)
        plain = sum(keyhash.is_plain(k) for k in keys)
        if plain:
            log.warning("%d settings key(s) are plain SHA-256: prefer the salted form "
                        "(python -m configs.keyhash)", plain)
        log.info(json.dumps({"event": "auth", "enabled": auth.enabled, "api_keys": len(keys)}))
