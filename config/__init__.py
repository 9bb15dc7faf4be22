"""Settings and logging: the one place batchshift reads its configuration from.

The bottom layer: it imports nothing of batchshift's other packages (``make lint`` checks the
layering with import-linter; the contracts are in pyproject.toml).
"""

from config.settings import Settings, SettingsError, load_settings

__all__ = ["Settings", "SettingsError", "load_settings"]
