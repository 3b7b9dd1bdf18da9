"""Plain-Python face pipelines (no Ray): decode, detect, align, embed, analyse.

Every stage takes a batch and returns a batch, so the Serve deployments in
``deployments/`` can batch requests across clients.
"""
