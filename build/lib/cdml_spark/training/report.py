"""What a training run records besides model.pt / model.json: the per-epoch figure (`plot_history`,
training.png) and the MLflow run (`log_training_run`)."""

from __future__ import annotations

from cdml_spark.config import MlflowConfig

__all__ = ["log_training_run", "plot_history"]


def plot_history(history: list[dict], path: str, best_epoch: int = 0) -> None:
    """Training loss and validation NDCG per epoch, the kept epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [h["train_loss"] for h in history], marker="o")
    left.set(xlabel="epoch", ylabel="triplet loss (mined negatives)", title="training loss")
    right.plot(epochs, [h["val_ndcg"] for h in history], marker="o", color="tab:green")
    if best_epoch:
        right.axvline(best_epoch, color="grey", linestyle="--", label=f"kept: epoch {best_epoch}")
        right.legend()
    right.set(xlabel="epoch", ylabel="NDCG of co-watch neighbours", title="validation retrieval (selection)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def log_training_run(
    mlflow_cfg: MlflowConfig,
    model_version: str,
    params: dict,
    history: list[dict],
    artifact_dir: str,
    summary: dict,
) -> None:
    """One MLflow run named `model_version`: params, per-epoch metrics, summary, the artifact."""
    import mlflow

    mlflow.set_tracking_uri(mlflow_cfg.tracking_uri)
    mlflow.set_experiment(mlflow_cfg.experiment)
    with mlflow.start_run(run_name=model_version):
        mlflow.log_params(params)
        for h in history:
            mlflow.log_metrics({k: v for k, v in h.items() if k not in ("epoch", "step")}, step=h["epoch"])
        mlflow.log_metrics(summary)
        mlflow.log_artifacts(artifact_dir, artifact_path="model")
