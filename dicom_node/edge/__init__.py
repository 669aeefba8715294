"""dicom_node/edge."""
