"""Delivery tests use the real node, worker and DCMTK PACS fixtures of ``tests/jobs/conftest.py``."""

from tests.jobs.conftest import node_factory, pacs

__all__ = ["node_factory", "pacs"]
