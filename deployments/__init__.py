"""Ray Serve adapters over ``pipelines/`` and ``index/``: the only code that imports ray.serve.

In a replica process, importing this package first prepares the process
(:mod:`deployments.serve.replica_process`): gRPC between deployments on the node
address with a message limit the API's requests fit in, and the app's logs in
the replica's Serve log.
"""

from deployments.serve import replica_process

replica_process.prepare()
