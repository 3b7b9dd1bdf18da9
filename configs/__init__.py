"""Typed configuration: ``configs.settings`` holds the one settings object (fed from
YAML and the environment), ``configs.serve_env`` the environment of Serve's mode, and
the serve configs and KubeRay manifest beside them. Nothing here imports another part
of facefleet: every part may read its configuration from here.
"""
