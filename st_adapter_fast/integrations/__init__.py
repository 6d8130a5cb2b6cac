"""Integrations with model libraries (timm)."""
