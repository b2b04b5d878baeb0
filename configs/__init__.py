"""Run configs (ml_collections ``get_config`` files), shipped with the package."""
