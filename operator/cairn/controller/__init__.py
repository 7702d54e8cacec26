"""The operator of TrainingRuns, Models and Evaluations: ``cairn operator`` or ``kopf run -m cairn.controller``."""

from cairn.controller import handlers, model_handlers  # noqa: F401  (registers the Kopf handlers)
