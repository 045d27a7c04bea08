"""Where definitions live: the interface, and one adapter per backing system."""

from inferstack.configstore.base import ConfigConflictError, ConfigStore, Watch

__all__ = ["ConfigConflictError", "ConfigStore", "Watch"]
