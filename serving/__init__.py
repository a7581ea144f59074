"""Ray Serve endpoints for the mastering chain.

=====================  =================================================================
module                 what
=====================  =================================================================
``config``             :class:`ServingConfig`: builds the app and generates ``config.yaml``
``app``                the FastAPI ingress deployment (spools uploads, drives the pipeline)
``api``                routes, parameters, OpenAPI (``/docs``)
``http``               token check, upload limit, metrics middleware; error bodies
``request``            one ``POST /v1/master``: parameters, decode, master, encode, reports
``attempts``           auto-retry (:mod:`mastering.retry`) through the stage groups
``stages``             the stage-group deployment (``@serve.batch``, ``@serve.multiplexed``)
``runner``             a stage group's device work: begin, stages, measure, score, finish
``batch``              songs in flight and how a group batches them
``wire``               tensors between replicas as NumPy arrays
``models``             chains by name: default, style adapters, genre adapters, variants
``codec``              decode uploads, encode masters in memory, measurements for reports
``direct``             the same work as a request in one process (benchmark baseline)
``metrics``            Prometheus metrics via ``ray.util.metrics``
``local``              start Serve on a port and deploy (CLI, tests, benchmark)
=====================  =================================================================
"""
