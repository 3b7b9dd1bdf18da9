"""The routes of the API, one module per family: faces (detect, embed, verify,
analyze, health), gallery (collections, enrolment, identify), listing (pages, persons,
export and import), admin (keys, audit), metrics, and the DeepFace-compatible routes.
Each parses its request, calls the flow, and shapes the answer."""
