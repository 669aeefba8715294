"""dicom_node/cli."""
