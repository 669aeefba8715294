"""The ops tests run real ``dicom-node`` processes with the job tests' peers (DCMTK storescp, the
fixed-cost plugin pipeline); their fixtures are shared from ``tests/jobs/conftest.py``."""

from tests.jobs.conftest import node_factory, pacs

__all__ = ["node_factory", "pacs"]
