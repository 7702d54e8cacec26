"""Cairn: tracked training runs.

``import cairn`` gives the training-side SDK and nothing else, so training images need only the
standard library::

    import cairn
    cairn.init(experiment="digits", config={"lr": 0.1})
    cairn.log({"loss": 0.3, "acc": 0.9}, step=10)
    cairn.finish()
"""

from cairn import sdk as _sdk
from cairn.sdk import Config, Run, config, finish, init, log, log_artifact

__version__ = "0.1.0"

__all__ = ["Config", "Run", "config", "finish", "init", "log", "log_artifact", "run", "__version__"]


def __getattr__(name: str):
    if name == "run":  # the active run changes after import, so it is looked up each time
        return _sdk.run
    raise AttributeError(name)
