"""The gallery: a durable store of collections, persons and face embeddings
(``index.store``), sharded FAISS indexes rebuilt from it and the top-k merge
across shards (``index.shard``, ``index.merge``), the gallery service
(``index.gallery``) and the access service for API keys and the audit trail
(``index.access_service``). Plain Python: the Ray actor and Serve deployment
live in ``deployments/serve/gallery.py``.
"""
