"""The TrainingRun operator: ``cairn operator`` or ``kopf run -m cairn.controller``."""

from cairn.controller import handlers  # noqa: F401  (registers the Kopf handlers)
