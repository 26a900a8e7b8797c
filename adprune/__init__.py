"""ADPrune's front door: the ``adprune`` command, which gathers the commands of the three packages
(``adprune_core``: train, config, options; ``study``: study, worker, mlflow-server, ui, snapshots;
``reports``: report, pick, control). Nothing else lives here, and no package below imports it."""
