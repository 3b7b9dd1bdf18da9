"""The request flow: every request of the API as plain code over typed backends.

- :mod:`~pipelines.flow.contracts`: what the flow needs of the detector,
  embedder, analyzer and gallery backends (Protocols), and what the gallery
  side answers (:class:`IdentifiedImage`, :class:`RegisteredImages`);
- :mod:`~pipelines.flow.policy`: thresholds, default and bound models,
  collection creation: decided once, before any model runs;
- :mod:`~pipelines.flow.core`: :class:`Flow`, the orchestration;
- :mod:`~pipelines.flow.deepface`: the DeepFace-compatible requests over it;
- :mod:`~pipelines.flow.gallery_side`: identify and register where the gallery is;
- :mod:`~pipelines.flow.facts`: the one collection fact the ingress remembers.

Nothing here imports Ray, Serve, FastAPI, ``index`` or ``deployments``.
"""

from pipelines.flow.contracts import (AnalyzeBackend, DetectBackend, EmbedBackend, FaceHits,
                                      GalleryBackend, IdentifiedImage, RegisteredImages)
from pipelines.flow.core import CROP_SPEC, FaceQuery, Flow, chip_specs, unwrap
from pipelines.flow.gallery_side import (given_vector, identify_embedded, nearest_per_person,
                                         register_embedded, replayed_answer, search_depth)
from pipelines.flow.policy import Policy

__all__ = ["CROP_SPEC", "AnalyzeBackend", "DetectBackend", "EmbedBackend", "FaceHits",
           "FaceQuery", "Flow", "GalleryBackend", "IdentifiedImage", "Policy",
           "RegisteredImages", "chip_specs", "given_vector", "identify_embedded",
           "nearest_per_person", "register_embedded", "replayed_answer", "search_depth",
           "unwrap"]
