"""Pure analysis pipelines: DICOM files in, typed findings (``pipelines.findings``) out.

Public surface: ``pipelines.registry.get_pipeline(name, models_dir, compute=None) -> Pipeline``,
``PIPELINE_NAMES``, ``PIPELINE_MODELS``; ``Pipeline.run(paths) -> Findings`` and ``run_timed``;
``pipelines.errors.PipelineInputError`` (input refused, permanent) and ``PipelineNotInstalledError``
(weights missing or not verified: skip the job with its reason); ``pipelines.compute.select_compute``;
``pipelines.io.load_ct_series`` / ``load_radiograph``. Nothing here imports ``dicom_node``.
"""
