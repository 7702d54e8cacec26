"""The record format shared by the SDK (writer) and the ingest agent (reader).

A run directory holds ``records.jsonl``: one JSON object per line, each with a ``seq`` number
(0, 1, 2, ... per writer) and a ``type``. Training code never talks to the network; the agent
reads this file and commits it to the store.
"""

RECORDS_FILE = "records.jsonl"
ARTIFACTS_DIR = "artifacts"
METRICS_DIR = "metrics"
PARAMS_FILE = "params.json"
CHECKPOINTS_DIR = "checkpoints"  # checkpoints/<step>/...: uploaded, and restored on a retry
DATASET_DIR = "dataset"  # spec.dataset.stage: the dataset, copied in by the prepare step (not uploaded)
RESUME_FILE = "resume.json"  # written by the prepare step when an attempt resumes from a checkpoint

# Record types
RUN = "run"  # run identity, config, environment and code version, written once by init()
METRIC = "metric"  # {"step": int, "ts": float seconds, "values": {key: number}}
PARAMS = "params"  # {"params": {key: scalar}} added after init (config.update)
TAGS = "tags"  # {"tags": {key: str}}
ARTIFACT = "artifact"  # {"path": path relative to the run dir}
FINISH = "finish"  # {"status": "FINISHED"|"FAILED", "exit_code": int|None, "ts": float}

MAX_KEY_LENGTH = 250
