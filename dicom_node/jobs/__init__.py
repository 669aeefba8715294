"""dicom_node/jobs."""
