"""Lacquer tuning: the append-only feedback tables (:mod:`tuning.store`), Ray Tune searches of
the auto-retry policy (:mod:`mastering.retry`) and of the style adapters
(:mod:`tuning.tune_retry`, :mod:`tuning.tune_adapters`, trial tables in :mod:`tuning.trials`)
and the continuous-improvement loop (:mod:`tuning.improve`). Sits above :mod:`mastering`
(which never imports it).
"""
