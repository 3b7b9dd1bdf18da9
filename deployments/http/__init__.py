"""The HTTP API of the ingress: the FastAPI app (``app.create_app``), its routes
(``routes/``), request bodies and answers, request parsing and images, API keys and
scopes, rate limits, error mapping, readiness and the docs pages. Plain FastAPI over
the request flow (``pipelines.flow``): it knows nothing of Serve's deployments."""
