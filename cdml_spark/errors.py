"""Every exception the project raises on purpose, in one place (it imports nothing: cheap for `cli`).

`cli.run_job` turns the user errors (all but `VideoKeyCollision` and `UnknownVideoKey`) into one
line naming the problem and exit status 2; the other two end the job with a traceback (status 1).
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeletedRowsInFiles",
    "InputSchemaError",
    "RefusedWrite",
    "SetupError",
    "StaleTriplets",
    "UnknownVideoKey",
    "VideoKeyCollision",
]


class ConfigError(ValueError):
    """A config file, `--set` override or value is wrong; the message names the key or file. Exit 2."""


class SetupError(RuntimeError):
    """The environment lacks something `scripts/setup.sh` provides (e.g. the Delta jars). Exit 2."""


class InputSchemaError(ValueError):
    """An input (events or features) lacks a required column or has one of an unusable type, or a
    Delta source lacks the change data `events.read=changes` needs; nothing was written. Exit 2."""


class RefusedWrite(RuntimeError):
    """A job's output failed a guard (empty, mostly quarantined, or far smaller than the current
    version); the table was left untouched. Exit 2."""


class StaleTriplets(RuntimeError):
    """`train` found triplets built from other inputs than the current tables hold: rerun
    make_triplets. Exit 2."""


class DeletedRowsInFiles(RuntimeError):
    """The snapshot's parquet files hold rows that Delta deletion vectors mark deleted (a reader of the
    files themselves would return them): REORG the table or rerun the job that writes it. Exit 2."""


class VideoKeyCollision(RuntimeError):
    """Two video ids share a 64-bit hash key (astronomically rare; the graph would merge them): not a
    user error, the job fails with a traceback."""


class UnknownVideoKey(KeyError):
    """A triplet names a video key that the in-memory feature table does not hold (triplets older than
    video_features: rerun make_triplets); the job fails with a traceback."""
