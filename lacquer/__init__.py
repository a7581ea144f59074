"""The ``lacquer`` command line: the top layer, above mastering, actors, cluster, serving and
tuning. Each subcommand lives in ``lacquer/commands/<name>.py`` and imports only what it needs,
so ``lacquer analyze`` never starts Ray."""
