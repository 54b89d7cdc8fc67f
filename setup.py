"""Kept for tools that still call ``setup.py``; the whole configuration is in pyproject.toml."""
from setuptools import setup

setup()
