"""Stage compare: every variant of params.yaml side by side, and the verdict.

Reads reports/summaries/<V>.json (the evaluate stage's) and the runs in MLflow. Writes reports/comparison.md
(the verdict sentence per pair first), comparison.json (leaflab.comparison's schema), comparison.png, the data
of the top-level DVC plots that overlay the variants (reports/plots/*.csv), and one MLflow run tagged
leaflab.kind=comparison holding all of it, with the pairwise differences as metrics; registers the best seed of
each variant as a version of the MLflow model leaflab-<V>.
"""

from __future__ import annotations

from typing import Callable

from leaflab import comparison, mlflow_model, plots, tracking
from leaflab.config import Config
from leaflab.layout import Layout, write_csv, write_json, write_text


def run(cfg: Config, layout: Layout = Layout(), say: Callable[[str], None] = print) -> dict:
    tracking.check_reachable(tracking.tracking_uri())
    records = comparison.records_from_summaries(cfg.variants, layout)
    document = comparison.compare(records, order=list(cfg.variants))
    write_json(layout.comparison("json"), document)
    write_text(layout.comparison("md"), comparison.markdown_report(document))
    plots.save_png(plots.comparison_figure(document), layout.comparison("png"))
    write_plot_data(document, layout)
    run_id = log_comparison(cfg.tracking.experiment, document, layout)
    for variant, version in register_best_runs(document).items():
        say(f"{variant}: best seed registered as models:/{mlflow_model.registered_name(variant)}/{version}")
    header, rows = comparison.variant_cells(document)
    say(comparison.markdown_table(header, rows) + "\n" + "\n".join(document["verdict"]))
    say(f"→ {layout.comparison('md')}, {layout.comparison('json')}, {layout.comparison('png')}; MLflow comparison "
        f"run {run_id}")
    return document


def write_plot_data(document: dict, layout: Layout) -> None:
    """Long tables, one row per variant and point, that dvc.yaml's top-level plots overlay (the `overlay`
    template colours by variant): validation accuracy per epoch, accuracy per robustness level, accuracy vs cost."""
    folder = layout.reports_root / "plots"
    variants = document["variants"]
    write_csv(folder / "validation.csv", ["variant", "epoch", "val_accuracy"],
              ([name, epoch, f"{acc:.6g}"] for name, v in variants.items()
               for epoch, acc in v["curves"]["val_accuracy"]))
    axes = dict.fromkeys(axis for v in variants.values() for axis in v["robustness"])
    for axis in axes:
        write_csv(folder / f"robustness_{axis}.csv", ["variant", axis, "accuracy"],
                  ([name, level, f"{acc:.6g}"] for name, v in variants.items()
                   for level, acc in sorted(v["robustness"].get(axis, {}).items(), key=lambda item: float(item[0]))))
    write_csv(folder / "cost.csv", ["variant", "frontend_macs_millions", "test_accuracy"],
              ([name, f"{v['macs_per_clip'].get('frontend', 0) / 1e6:.6g}", f"{v['test_accuracy']['mean']:.6g}"]
               for name, v in variants.items()))


def register_best_runs(document: dict) -> dict[str, str]:
    """The seed of each variant with the best test accuracy → a version of leaflab-<V> in the model registry."""
    versions = {}
    for variant, v in document["variants"].items():
        per_seed = v["test_accuracy"]["per_seed"]
        seed = max(per_seed, key=lambda s: (per_seed[s], -int(s)))  # the lowest seed on a tie
        versions[variant] = mlflow_model.register_best(variant, v["run_ids"][seed], per_seed[seed], int(seed))
    return versions


def log_comparison(experiment: str, document: dict, layout: Layout) -> str:
    """The comparison as an MLflow run beside its member runs (one per set of members: a rerun logs into the
    same run at the next step); returns its id."""
    members = sorted(r["run_id"] for r in document["runs"])
    run = tracking.comparison_run(experiment, members, {
        "leaflab.variants": ",".join(document["variants"]), "data_digest": document["data_digest"] or "",
        "params_hash_shared": document["params_hash_shared"] or "",
        **{f"leaflab.member.{r['variant']}.seed{r['seed']}": r["run_id"] for r in document["runs"]}})
    metrics = {}
    for pair, values in document["pairs"].items():
        metrics[f"difference/{pair}/clean"] = values["difference_mean"]
        for condition, d in values["conditions"].items():
            metrics[f"difference/{pair}/{condition.replace('=', '/')}"] = d["difference_mean"]
    for name, v in document["variants"].items():
        metrics[f"test_accuracy/{name}"] = v["test_accuracy"]["mean"]
    run.log_metrics(metrics, step=run.next_step("test_accuracy/" + next(iter(document["variants"]))))
    run.set_tags({"leaflab.verdict": " | ".join(document["verdict"])[:5000]})
    for suffix in ("md", "json", "png"):
        run.log_artifact(layout.comparison(suffix))
    run.finish("FINISHED")
    return run.run_id
