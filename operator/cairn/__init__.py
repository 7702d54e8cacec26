"""Cairn: tracked training runs.

``import cairn`` gives the training-side SDK and nothing else, so training images need only the
standard library::

    import cairn
    cairn.init(experiment="digits", config={"lr": 0.1})
    cairn.log({"loss": 0.3, "acc": 0.9}, step=10)
    cairn.finish()
"""

from cairn import sdk as _sdk
from cairn.sdk import Config, Resume, Run, config, finish, init, log, log_artifact, log_example, save_checkpoint

__version__ = "0.1.0"

__all__ = ["Config", "Resume", "Run", "config", "dataset_dir", "finish", "init", "log", "log_artifact", "log_example",
           "resume_from", "run", "save_checkpoint", "__version__"]


def __getattr__(name: str):
    if name == "run":  # the active run changes after import, so it is looked up each time
        return _sdk.run
    if name == "resume_from":  # set by init() when this attempt starts from a restored checkpoint
        return _sdk.resume_from
    if name == "dataset_dir":  # read when asked for: importing cairn does no I/O
        return _sdk.dataset_dir
    raise AttributeError(name)
