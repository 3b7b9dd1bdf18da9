"""Typed configuration: one settings object fed from YAML / environment."""

from configs.settings import Settings, get_settings

__all__ = ["Settings", "get_settings"]
