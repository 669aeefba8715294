"""dicom_node/delivery."""
