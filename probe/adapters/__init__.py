"""Adapters: one file per model family saying where its parts are and which tokens play which role."""

from probe.adapters.base import Adapter, Prepared

__all__ = ["Adapter", "Prepared"]
