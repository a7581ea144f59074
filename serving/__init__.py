"""Ray Serve endpoints for the mastering chain.

=====================  =================================================================
module                 what
=====================  =================================================================
``config``             :class:`ServingConfig`: builds the app and generates ``config.yaml``
``app``                the FastAPI ingress deployment (decode, pipeline, encode, retries)
``api``                routes, parameters, OpenAPI (``/docs``)
``http``               token check, upload limit, metrics middleware; error bodies
``stages``             the stage-group deployment (``@serve.batch``, ``@serve.multiplexed``)
``batch``              songs in flight and how a group batches them
``models``             chains by name: default, style adapters, built-in variants
``codec``              decode uploads, encode masters, measurements for reports
``metrics``            Prometheus metrics via ``ray.util.metrics``
``local``              start Serve on a port and deploy (CLI, tests, benchmark)
=====================  =================================================================
"""
