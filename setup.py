"""Packaging. Metadata lives in pyproject.toml; this file is where the compiled extension from csrc/
will be declared (torch.utils.cpp_extension + ninja), with an env var to skip it."""
from setuptools import setup

setup()
