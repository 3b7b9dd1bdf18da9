"""Ray Serve adapters over ``pipelines/`` and ``index/``: the only code that imports ray.serve."""
