"""The one place that decides what a request may do and with what, before any model runs.

:class:`Policy` holds every decision the service makes from its settings:

- the detector and face count of a request (a request naming an unknown
  detector fails here);
- the default embedding model, and the model a collection is bound to
  (:meth:`Policy.bound_model`: the request's, else the collection's, else
  the default);
- the thresholds: 1:1 (verify) and 1:N (identify, DeepFace ``/search``), a
  request's own or the calibrated one; a model without one fails with 422
  here, before any image is decoded;
- whether a write may create its collection (``index.strict_collections``
  and the caller's ``may_create``), and whether a write to a collection that
  does not exist fails at once.

The request flow (``pipelines.flow.core.Flow``) asks these in an order that
makes a request that must fail fail before the first model runs; the routes
only parse and shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipelines.errors import Forbidden, ValidationError
from configs.settings import Settings
from pipelines.flow.contracts import Actor
from pipelines.registry import DETECTORS


@dataclass(frozen=True)
class Policy:
    s: Settings

    # ---------------------------------------------------------------- models
    @property
    def default_embedder(self) -> str:
        assert self.s.default_embedder is not None  # set by Settings' validation
        return self.s.default_embedder

    @property
    def default_detector(self) -> str:
        return self.s.default_detector

    def embedder(self, requested: str | None) -> str:
        """The model of a request that is not bound to a collection."""
        return requested or self.default_embedder

    def detector(self, requested: str | None) -> str:
        name = requested or self.s.default_detector
        if name not in DETECTORS:
            raise ValidationError(f"unknown detector '{name}'; available: {', '.join(DETECTORS)}",
                                  {"detector": name, "available": list(DETECTORS)})
        return name

    def max_faces(self, requested: int | None) -> int:
        return min(requested or self.s.max_faces, self.s.max_faces)

    @staticmethod
    def actions(requested: Sequence[str]) -> tuple[str, ...]:
        """The attribute actions of an analyze, each once (none is a 422)."""
        if not requested:
            raise ValidationError("'actions' must name at least one of age, gender, emotion, "
                                  "race, anti_spoofing")
        return tuple(dict.fromkeys(requested))

    def bound_model(self, requested: str | None, collection_model: str | None) -> str:
        """The model a gallery request embeds with: the request's, else the one the
        collection is bound to, else (a collection the write will create) the default."""
        return requested or collection_model or self.default_embedder

    # ---------------------------------------------------------------- thresholds
    def verify_threshold(self, model: str) -> float | None:
        """The calibrated 1:1 threshold of ``model`` (None: not calibrated)."""
        return self.s.threshold_for(model)

    def identify_threshold(self, model: str) -> float | None:
        """The calibrated 1:N threshold of ``model`` (None: not calibrated): every
        enrolled face is a chance of a false accept, so 1:N has its own."""
        return self.s.identify_threshold_for(model)

    def verify_threshold_of(self, model: str, given: float | None) -> float:
        threshold = given if given is not None else self.verify_threshold(model)
        if threshold is None:
            raise ValidationError(f"model '{model}' has no calibrated threshold; pass 'threshold'")
        return threshold

    def identify_threshold_of(self, model: str, given: float | None) -> float:
        threshold = given if given is not None else self.identify_threshold(model)
        if threshold is None:
            raise ValidationError(f"model '{model}' has no calibrated identify threshold; "
                                  "pass 'threshold' or set identify_thresholds")
        return threshold

    def search_threshold(self, model: str) -> float:
        """DeepFace ``/search``: the calibrated 1:N threshold, which it cannot be given."""
        threshold = self.identify_threshold(model)
        if threshold is None:
            raise ValidationError(f"model '{model}' has no calibrated identify threshold")
        return threshold

    # ---------------------------------------------------------------- collections
    @property
    def strict_collections(self) -> bool:
        """Writes to an unknown collection fail instead of creating it."""
        return self.s.index.strict_collections

    def may_create(self, actor: Actor | None) -> bool:
        """Whether a write (enrolment, import, DeepFace ``/register``) may create the
        collection it names: not with strict collections, nor for a caller whose
        key may not."""
        return not self.strict_collections and getattr(actor, "may_create", True)

    @staticmethod
    def enrol_unknown(requested: bool | None, actor: Actor | None) -> bool | None:
        """Whether an identify enrols the faces that match nobody: the request's
        choice, else (None) the collection's setting. It writes templates, so only a
        key that may write enrols: asking for it without one is refused, and the
        collection's setting does not apply to such a key."""
        may_write = getattr(actor, "may_write", True)
        if requested and not may_write:
            raise Forbidden("'enrol_unknown' enrols faces: it needs a key with the write scope",
                            {"required_scope": "write"})
        return requested if may_write else False

    @staticmethod
    def thumbnails(enrols: bool | None) -> bool:
        """Whether the Detector encodes face thumbnails for a request: for every one
        that may enrol faces (a register; an identify whose strangers may be
        enrolled). A collection that keeps none drops them where it stores faces."""
        return enrols is not False

    def must_exist(self, write: bool) -> bool:
        """Whether a request naming a collection that does not exist fails at once,
        before any image is looked at: a read always, a write when collections are
        strict (otherwise the write creates it, :meth:`may_create` permitting)."""
        return not write or self.strict_collections
