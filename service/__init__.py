"""MiniVault: a small self-hosted text-generation service."""

__version__ = "0.1.0"
