"""The gallery: a durable store of collections, persons and face embeddings,
sharded FAISS indexes rebuilt from it, and the top-k merge across shards.
Plain Python: the Ray actor and Serve deployment live in ``deployments/gallery.py``.
"""
