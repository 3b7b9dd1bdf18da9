"""Unknown faces grouped into candidate people.

- ``POST /v1/collections/{c}/clusters`` groups the faces of persons without a name
  (``scope: "all"``: every face) and suggests for each group the nearest named
  person. Up to ``index.cluster_sync_max_faces`` faces in scope it answers the
  clusters at once (200); above, it starts a job: 202, ``{"job_id"}`` and a
  ``Location`` header;
- ``GET /v1/collections/{c}/clusters/jobs/{job_id}`` answers the job's status,
  progress and, when done, the same result.

Naming a cluster is a merge of its persons into a new or existing person, then a
PATCH of the person's name; once named, its faces leave the default scope.
"""

# No `from __future__ import annotations`: FastAPI resolves these signatures.
from fastapi import APIRouter, Request, Response

from deployments.http.access import actor_of
from deployments.http.bodies import ClusterBody, Collection
from deployments.http.common import api_of, body_schema
from deployments.http.schemas import (GALLERY_ERRORS, ClusterJobOut, ClusterJobStartedOut,
                                      ClustersOut)

router = APIRouter()


@router.post("/v1/collections/{collection}/clusters", tags=["unknown faces"],
             response_model=ClustersOut | ClusterJobStartedOut,
             responses={**GALLERY_ERRORS, 202: {"model": ClusterJobStartedOut,
                                                "description": "a job was started"}},
             openapi_extra=body_schema(ClusterBody, required=False))
async def cluster(collection: Collection, request: Request, response: Response) -> dict:
    """Group the collection's unnamed faces into candidate people, each with the nearest
    named person as a suggestion (a large collection: a job to poll)."""
    api = api_of(request)
    empty = (request.headers.get("content-length") in (None, "0")
             and "transfer-encoding" not in request.headers)
    body = ClusterBody() if empty else (await api.parse(request, ClusterBody))[0]
    out = await api.flow.cluster(collection, body.scope, body.threshold,
                                 actor=actor_of(request), job=body.job)
    if "job_id" in out:
        response.status_code = 202
        response.headers["Location"] = (f"/v1/collections/{collection}/clusters/jobs/"
                                        f"{out['job_id']}")
    return out


@router.get("/v1/collections/{collection}/clusters/jobs/{job_id}", tags=["unknown faces"],
            response_model=ClusterJobOut, responses=GALLERY_ERRORS)
async def cluster_job(collection: Collection, job_id: str, request: Request) -> dict:
    """A clustering job: running (with its progress), done (with its result) or failed."""
    return await api_of(request).flow.cluster_job(collection, job_id[:64])
