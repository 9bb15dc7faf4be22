"""Settings and logging: the one place batchshift reads its configuration from."""

from config.settings import Settings, SettingsError, load_settings

__all__ = ["Settings", "SettingsError", "load_settings"]
