"""dicom_node/reports."""
