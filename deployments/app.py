"""The one typed place where the Serve application is wired: ``build_app(args)``.

``serve_config.yaml`` points at ``deployments.app:build_app`` with ``args:``.
The settings are validated here, once, and handed to every deployment as
plain data. ``topology: separate`` (default) runs Detector, Embedder and
Analyzer as their own deployments, each scaled and batched on its own;
``topology: fused`` runs all three stages inside the Ingress replica, which
saves the handle hops per request on small machines (scale it by Ingress
replicas). Either way the request flow is the same code
(``pipelines.flow.Flow``), over other backends. The Gallery deployment is
added when ``gallery: true``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from configs.settings import load_settings
from deployments.serve.ingress import Ingress
from deployments.serve.models import Analyzer, Detector, Embedder
from pipelines.registry import check_model_settings


class AppArgs(BaseModel):
    """The ``args:`` of the application in ``serve_config.yaml``."""

    model_config = ConfigDict(extra="forbid")

    topology: Literal["separate", "fused"] = "separate"
    gallery: bool = True
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="overrides of configs.settings.Settings (environment FACEFLEET_* also applies)",
    )


def build_app(args: dict[str, Any] | None = None) -> Application:
    a = AppArgs.model_validate(args or {})
    # a bad value fails the deploy with one line naming its variable (SettingsProblem)
    settings = load_settings(a.settings)
    check_model_settings(settings)  # the default embedder is one its pack offers
    s = settings.model_dump(mode="json")
    gallery = None
    if a.gallery:
        from deployments.serve.gallery import Gallery

        gallery = Gallery.bind(s)
    if a.topology == "fused":
        return Ingress.bind(s, None, None, None, gallery)
    return Ingress.bind(s, Detector.bind(s), Embedder.bind(s), Analyzer.bind(s), gallery)
