"""The user's commands: the ``xformer`` CLI, recipes (defaults + file + overrides), sweeps and reports."""
