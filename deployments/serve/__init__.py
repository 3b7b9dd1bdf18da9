"""The Ray Serve deployments: the Ingress (the HTTP app per replica), the model
deployments (Detector, Embedder, Analyzer), the Gallery and its shard actors, the
backends that call them from the flow, the metrics board, and the preparation every
replica process needs."""
