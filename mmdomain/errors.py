"""Errors mmdomain raises on purpose. Each says what was wrong and what to do instead."""

from __future__ import annotations


class MMDomainError(Exception):
    """Base class: an error a user can act on (bad input, bad config, missing plugin)."""


class UnknownComponentError(MMDomainError, KeyError):
    """A name that no installed plugin registered; the message lists the available ones."""

    def __init__(self, kind: str, name: str, available: list[str]):
        self.kind, self.name, self.available = kind, name, sorted(available)
        listing = ", ".join(self.available) or "none registered"
        super().__init__(f"unknown {kind} {name!r}; available: {listing}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class DuplicateNameError(MMDomainError):
    """Two plugins registered the same name for the same kind of component."""


class InvalidSpecError(MMDomainError):
    """A plugin registered something that is not a valid spec."""


class PluginLoadError(MMDomainError):
    """A plugin failed to import or register (raised only in strict mode)."""


class ConfigError(MMDomainError):
    """A configuration file or value is invalid; the message names the field."""


class CheckpointError(MMDomainError):
    """A checkpoint is missing, unreadable, or needs a plugin that is not installed."""


class DataError(MMDomainError):
    """A data file or folder cannot be used; the message names it and the reason."""
