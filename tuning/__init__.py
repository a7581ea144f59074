"""Lacquer tuning: auto-retry of weak masters (:mod:`tuning.retry`), the append-only feedback
tables (:mod:`tuning.store`), Ray Tune searches of the retry policy and of the style adapters
(:mod:`tuning.tune_retry`, :mod:`tuning.tune_adapters`, trial tables in :mod:`tuning.trials`)
and the continuous-improvement loop (:mod:`tuning.improve`). Sits above :mod:`mastering`
(which never imports it).
"""
