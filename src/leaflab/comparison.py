"""The verdict: variants side by side on the same clips and seeds, with paired statistics, robustness and cost.

Runs come as `RunRecord`s, one per (variant, seed), from either source:
- `records_from_summaries`: the compare stage — exactly the runs of this checkout's pipeline
  (reports/summaries/<V>.json, written by evaluate@V);
- `records_from_mlflow`: `leaflab compare` — any complete runs of an experiment (other machines, `dvc exp`),
  selected by DVC experiment name, by run ids, or by default the set-up (data, shared params, test clips) of the
  newest complete run, taking the latest complete run of each variant and seed of that set-up.
`check_comparable` refuses, in one line naming the difference, runs that do not belong together: not evaluated,
other data (DVC's digest of data/prepared), other shared params (everything but the variant's frontend
overrides), other test clips. `compare` then computes the document whose schema other tools rely on
(reports/comparison.json; `difference` is accuracy(B) − accuracy(A) for the pair `A_vs_B`):

  {"variants": {V: {"seeds", "test_accuracy": {"mean", "ci95", "per_seed"}, "test_macro_f1", "robustness":
                    {axis: {level: accuracy}}, "macs_per_clip": {"frontend", "classifier"}, "params", "run_ids",
                    "train_samples_per_s", "infer_clips_per_s", "machine"}},
   "pairs": {"A_vs_B": {"difference_mean", "ci95", "per_seed": {seed: {"difference", "mcnemar_p", "n01", "n10"}},
                        "conditions": {condition: {… the same …}}}},
   "verdict": [one sentence per pair], "data_digest", "params_hash_shared", "runs": […]}
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from leaflab import paired, tracking
from leaflab.errors import LeaflabError
from leaflab.layout import Layout, read_json

MACHINE_TAGS = ("host", "cpu", "device", "threads", "torch_version")


@dataclass
class RunRecord:
    """What the comparison needs of one evaluated run (one variant and seed)."""

    variant: str
    seed: str
    run_id: str
    tags: dict[str, str]
    labels: np.ndarray                        # test clips' true classes
    predicted: np.ndarray                     # clean predictions, one per test clip
    subset: np.ndarray                        # the test clips the robustness conditions ran on
    robust: dict[str, np.ndarray]             # condition → predictions on the subset
    cost: dict                                # macs_per_clip, params, throughput
    train_samples_per_s: float | None = None
    run_name: str = ""
    status: str = ""
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.labels

    def robust_correct(self, condition: str) -> np.ndarray:
        return self.robust[condition] == self.labels[self.subset]

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.correct))

    @property
    def machine(self) -> tuple[str, ...]:
        return tuple(self.tags.get(k, "?") for k in MACHINE_TAGS)


# ---- collecting --------------------------------------------------------------------------------------------------
def records_from_summaries(variants: Iterable[str], layout: Layout = Layout()) -> list[RunRecord]:
    """One record per seed of each variant, from reports/summaries/<V>.json and the runs in MLflow."""
    records = []
    for variant in variants:
        summary = read_json(layout.summary_file(variant), "the evaluate stage's summary",
                            f"evaluate the variant first: dvc repro evaluate@{variant}")
        cost = {k: summary[k] for k in ("macs_per_clip", "params", "throughput")}
        for entry in summary["runs"]:
            run = tracking.run_record(entry["run_id"])
            records.append(RunRecord(
                variant=variant, seed=str(entry["seed"]), run_id=entry["run_id"], tags=run["tags"],
                labels=np.asarray(summary["labels"]), predicted=np.asarray(entry["predicted"]),
                subset=np.asarray(summary["subset"]),
                robust={k: np.asarray(v) for k, v in entry["robust_predicted"].items()}, cost=cost,
                train_samples_per_s=entry.get("train_samples_per_s"), run_name=run["run_name"] or "",
                status=run["status"], curves=tracking.metric_histories(entry["run_id"], ("val_accuracy",))))
    return records


def records_from_mlflow(experiment: str, dvc_exp: str | None = None, run_ids: Sequence[str] = (),
                        left_out: list[dict] | None = None) -> list[RunRecord]:
    """Complete (FINISHED and evaluated) training runs of `experiment`: exactly `run_ids`, or else (of the DVC
    experiment `dvc_exp` if given) the latest complete run of each variant and seed of the newest run's set-up.
    Complete runs of other set-ups are appended to `left_out` when a list is given (to say what was not taken)."""
    if run_ids:
        runs = [tracking.run_record(run_id) for run_id in run_ids]
        incomplete = [r["run_id"] for r in runs if not _complete(r)]
        if incomplete:
            raise LeaflabError(f"runs {', '.join(incomplete)} are not complete (FINISHED and evaluated); evaluate "
                               "them first (dvc repro evaluate@<variant>) or leave them out")
    else:
        query = "tags.`leaflab.kind` = 'training'" + (f" and tags.dvc_exp_name = '{dvc_exp}'" if dvc_exp else "")
        complete = [r for r in tracking.run_records(experiment, query) if _complete(r)]
        same, other = split_by_newest_setup(complete)
        runs = latest_per_variant_and_seed(same)
        if left_out is not None:
            left_out.extend(other)
    records = []
    for run in runs:
        predictions = tracking.open_run(run["run_id"]).load_dict("evaluate/predictions.json")
        records.append(RunRecord(
            variant=run["tags"]["variant"], seed=run["tags"]["seed"], run_id=run["run_id"], tags=run["tags"],
            labels=np.asarray(predictions["labels"]), predicted=np.asarray(predictions["predicted"]),
            subset=np.asarray(predictions["subset"]),
            robust={k: np.asarray(v) for k, v in predictions["robust_predicted"].items()},
            cost=_cost_from_metrics(run["metrics"]), train_samples_per_s=_mean_metric(run["run_id"], "samples_per_s"),
            run_name=run["run_name"] or "", status=run["status"],
            curves=tracking.metric_histories(run["run_id"], ("val_accuracy",))))
    return sorted(records, key=lambda r: (r.variant, _seed_key(r.seed)))


def _complete(run: dict) -> bool:
    return run["status"] == "FINISHED" and "test_accuracy" in run["metrics"] and "variant" in run["tags"]


SETUP_TAGS = ("data_digest", "params_hash_shared", "leaflab.clips_digest")


def setup_of(run: dict) -> tuple[str | None, ...]:
    """What makes runs comparable: the same data, shared params and test clips (the tags check_comparable reads)."""
    return tuple(run["tags"].get(tag) for tag in SETUP_TAGS)


def split_by_newest_setup(runs: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """(the runs of the newest run's set-up, the others): after `dvc exp run -S train.lr=…` the default comparison
    is that of the newest set-up, not a mix refused by check_comparable."""
    if not runs:
        return [], []
    newest = max(runs, key=lambda r: r["start_time"] or 0)
    same = [r for r in runs if setup_of(r) == setup_of(newest)]
    return same, [r for r in runs if setup_of(r) != setup_of(newest)]


def latest_per_variant_and_seed(runs: Sequence[dict]) -> list[dict]:
    """The newest run of each (variant, seed) among plain run dicts (tags, start_time)."""
    latest: dict[tuple[str, str], dict] = {}
    for run in runs:
        key = (run["tags"]["variant"], run["tags"].get("seed", "?"))
        if key not in latest or (run["start_time"] or 0) > (latest[key]["start_time"] or 0):
            latest[key] = run
    return list(latest.values())


def _cost_from_metrics(metrics: dict[str, float]) -> dict:
    def group(prefix: str, keys: Sequence[str]) -> dict:
        return {k: metrics[prefix + k] for k in keys if prefix + k in metrics}
    return {"macs_per_clip": group("macs_per_clip_", ("frontend", "classifier")),
            "params": group("params_", ("frontend", "classifier", "total")),
            "throughput": group("infer_", ("clips_per_s_model", "clips_per_s_frontend"))}


def _mean_metric(run_id: str, key: str) -> float | None:
    values = [v for _, v in tracking.metric_histories(run_id, (key,))[key]]
    return statistics.fmean(values) if values else None


def _seed_key(seed: str):
    return (0, int(seed)) if seed.isdigit() else (1, seed)


# ---- do they belong together? -------------------------------------------------------------------------------------
def check_comparable(records: Sequence[RunRecord]) -> None:
    """One line naming the first difference that makes these runs incomparable."""
    if not records:
        raise LeaflabError("no complete runs to compare (trained and evaluated): run dvc repro first")
    seen: dict[tuple[str, str], RunRecord] = {}
    for record in records:
        key = (record.variant, record.seed)
        if key in seen:
            raise LeaflabError(f"two runs of {record.variant} seed {record.seed} ({seen[key].run_id}, "
                               f"{record.run_id}): select one, e.g. with --run-ids")
        seen[key] = record
    first = records[0]
    for record in records[1:]:
        for tag, what in (("data_digest", "data (DVC digest of data/prepared)"),
                          ("params_hash_shared", "shared params"), ("leaflab.clips_digest", "test clips")):
            if record.tags.get(tag) != first.tags.get(tag):
                detail = _params_difference(first, record) if tag == "params_hash_shared" else \
                    f"{first.tags.get(tag)} vs {record.tags.get(tag)}"
                raise LeaflabError(f"runs of different {what} cannot be compared: {_name(first)} and "
                                   f"{_name(record)} differ ({detail}); select runs of one set-up with "
                                   "--dvc-exp NAME or --run-ids")


def _name(record: RunRecord) -> str:
    return f"{record.variant} seed {record.seed} (run {record.run_id[:8]})"


def _params_difference(a: RunRecord, b: RunRecord) -> str:
    """The shared params that differ between two runs (their frontend blocks may differ by design)."""
    pa, pb = tracking.run_record(a.run_id)["params"], tracking.run_record(b.run_id)["params"]
    keys = sorted(k for k in set(pa) | set(pb) if not k.startswith("frontend.") and k not in ("variant", "seed",
                                                                                               "train.seeds"))
    differing = [f"{k}: {pa.get(k)} vs {pb.get(k)}" for k in keys if pa.get(k) != pb.get(k)]
    return "; ".join(differing[:3]) if differing else "the shared frontend block"


# ---- the comparison ------------------------------------------------------------------------------------------------
def compare(records: Sequence[RunRecord], order: Sequence[str] | None = None) -> dict:
    """The comparison document (module docstring) of comparable records."""
    check_comparable(records)
    by_variant: dict[str, list[RunRecord]] = {}
    for variant in order or ():
        by_variant[variant] = []
    for record in sorted(records, key=lambda r: _seed_key(r.seed)):
        by_variant.setdefault(record.variant, []).append(record)
    by_variant = {v: rs for v, rs in by_variant.items() if rs}
    variants = {v: summarise_variant(rs) for v, rs in by_variant.items()}
    pairs, verdict = {}, []
    for a, b in itertools.combinations(by_variant, 2):
        pair, sentence = compare_pair(a, by_variant[a], b, by_variant[b])
        pairs[f"{a}_vs_{b}"] = pair
        verdict.append(sentence)
    first = records[0]
    return {"variants": variants, "pairs": pairs, "verdict": verdict,
            "data_digest": first.tags.get("data_digest"), "params_hash_shared": first.tags.get("params_hash_shared"),
            "runs": [{"variant": r.variant, "seed": r.seed, "run_id": r.run_id, "run_name": r.run_name,
                      "status": r.status, "test_accuracy": r.accuracy,
                      "machine": dict(zip(MACHINE_TAGS, r.machine))} for r in records]}


def summarise_variant(records: list[RunRecord]) -> dict:
    mean, low, high = paired.t_interval([r.accuracy for r in records])
    conditions = list(records[0].robust)
    robustness: dict[str, dict[str, float]] = {}
    for condition in conditions:
        axis, level = condition.split("=")
        robustness.setdefault(axis, {})[level] = statistics.fmean(float(np.mean(r.robust_correct(condition)))
                                                                  for r in records)
    same_machine = len({r.machine for r in records}) == 1   # speeds of different machines are never averaged
    speeds = [r.train_samples_per_s for r in records if r.train_samples_per_s is not None]
    return {"seeds": [r.seed for r in records],
            "test_accuracy": {"mean": mean, "ci95": None if low is None else [low, high],
                              "per_seed": {r.seed: r.accuracy for r in records}},
            "test_macro_f1": _macro_f1_mean(records),
            "robustness": robustness,
            "macs_per_clip": records[0].cost.get("macs_per_clip", {}),
            "params": records[0].cost.get("params", {}),
            "train_samples_per_s": statistics.fmean(speeds) if speeds and same_machine else None,
            "infer_clips_per_s": records[0].cost.get("throughput", {}).get("clips_per_s_model") if same_machine
            else None,
            "machine": dict(zip(MACHINE_TAGS, records[0].machine)) if same_machine else "several (see runs)",
            "run_ids": {r.seed: r.run_id for r in records},
            "curves": {"val_accuracy": _mean_curve([r.curves.get("val_accuracy", []) for r in records])}}


def _macro_f1_mean(records: list[RunRecord]) -> float:
    from leaflab.evaluation import confusion_matrix, macro_f1

    n_classes = int(max(max(r.labels.max(), r.predicted.max()) for r in records)) + 1
    return statistics.fmean(macro_f1(confusion_matrix(r.labels, r.predicted, n_classes)) for r in records)


def _mean_curve(series: Sequence[list[tuple[int, float]]]) -> list[list[float]]:
    """[[epoch (1-based), mean over seeds], …] at the steps every non-empty series has."""
    series = [dict(s) for s in series if s]
    if not series:
        return []
    steps = sorted(set.intersection(*(set(s) for s in series)))
    return [[step + 1, statistics.fmean(s[step] for s in series)] for step in steps]


def compare_pair(a: str, records_a: list[RunRecord], b: str, records_b: list[RunRecord]) -> tuple[dict, str]:
    """The paired difference B − A over their common seeds, clean and per condition, and its verdict."""
    seeds = sorted({r.seed for r in records_a} & {r.seed for r in records_b}, key=_seed_key)
    if not seeds:
        raise LeaflabError(f"{a} and {b} share no seed ({[r.seed for r in records_a]} vs "
                           f"{[r.seed for r in records_b]}): pairing needs the same seeds; set train.seeds alike")
    ra = {r.seed: r for r in records_a if r.seed in seeds}
    rb = {r.seed: r for r in records_b if r.seed in seeds}
    clean = paired.paired_difference({s: ra[s].correct for s in seeds}, {s: rb[s].correct for s in seeds})
    conditions = {c: paired.paired_difference({s: ra[s].robust_correct(c) for s in seeds},
                                              {s: rb[s].robust_correct(c) for s in seeds})
                  for c in ra[seeds[0]].robust if c in rb[seeds[0]].robust}
    document = {**clean.as_dict(), "seeds": seeds,
                "conditions": {c: d.as_dict() for c, d in conditions.items()}}
    return document, paired.verdict_sentence(a, b, clean, conditions)


# ---- presenting ----------------------------------------------------------------------------------------------------
def _num(value, fmt: str = "{:.3f}") -> str:
    return "–" if value is None else fmt.format(value)


def _accuracy(test: dict) -> str:
    if test["ci95"] is None:
        return f"{test['mean']:.3f}"
    return f"{test['mean']:.3f} ({test['ci95'][0]:.3f}–{test['ci95'][1]:.3f})"


def markdown_table(header: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def variant_cells(document: dict) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "seeds", "test accuracy (95 % CI)", "macro-F1", "worst condition", "frontend MACs/clip",
              "classifier MACs/clip", "params", "train samples/s", "infer clips/s"]
    rows = []
    for name, v in document["variants"].items():
        worst = min(((f"{axis}={level}", acc) for axis, levels in v["robustness"].items()
                     for level, acc in levels.items()), key=lambda item: item[1], default=None)
        macs = v["macs_per_clip"]
        rows.append([name, str(len(v["seeds"])), _accuracy(v["test_accuracy"]), _num(v["test_macro_f1"]),
                     f"{worst[0]}: {worst[1]:.3f}" if worst else "–",
                     _num(macs.get("frontend"), "{:,.0f}"), _num(macs.get("classifier"), "{:,.0f}"),
                     _num(v["params"].get("total"), "{:,.0f}"), _num(v["train_samples_per_s"], "{:.0f}"),
                     _num(v["infer_clips_per_s"], "{:.0f}")])
    return header, rows


def markdown_report(document: dict, figure_name: str = "comparison.png") -> str:
    header, rows = variant_cells(document)
    text = ["# PCEN vs TBN (and every variant of params.yaml): the verdict\n\n",
            *[f"- {sentence}\n" for sentence in document["verdict"]],
            "\nAccuracy at file level on the same test clips for every variant; 95 % intervals are Student-t over "
            "seeds (the training variance); McNemar's exact test per seed covers the test sample. "
            "`difference` = accuracy(B) − accuracy(A) for the pair A_vs_B.\n\n",
            markdown_table(header, rows), f"\n![comparison]({figure_name})\n\n## Robustness (accuracy)\n\n"]
    variants = list(document["variants"])
    conditions = [(axis, level) for axis, levels in document["variants"][variants[0]]["robustness"].items()
                  for level in levels]
    text.append(markdown_table(["condition", *variants], [[f"{axis}={level}", *(
        f"{document['variants'][v]['robustness'].get(axis, {}).get(level, float('nan')):.3f}" for v in variants)]
        for axis, level in conditions]))
    text.append("\n## Pairs\n\n")
    pair_rows = []
    for name, pair in document["pairs"].items():
        ci = pair["ci95"]
        pair_rows.append([name, "clean", f"{100 * pair['difference_mean']:+.1f} pp",
                          "–" if ci is None else f"{100 * ci[0]:+.1f}…{100 * ci[1]:+.1f} pp",
                          ", ".join(f"{s}: {100 * d['difference']:+.1f} pp, p = {d['mcnemar_p']:.2g} "
                                    f"({d['n01']}/{d['n10']})" for s, d in pair["per_seed"].items())])
        for condition, d in pair["conditions"].items():
            ci = d["ci95"]
            pair_rows.append([name, condition, f"{100 * d['difference_mean']:+.1f} pp",
                              "–" if ci is None else f"{100 * ci[0]:+.1f}…{100 * ci[1]:+.1f} pp",
                              ", ".join(f"{s}: p = {v['mcnemar_p']:.2g}" for s, v in d["per_seed"].items())])
    text.append(markdown_table(["pair", "condition", "difference (mean)", "95 % CI over seeds",
                                "per seed: difference, McNemar p (n01/n10)"], pair_rows))
    text.append("\n## Runs\n\n")
    text.append(markdown_table(["variant", "seed", "run", "test accuracy", "machine"], [
        [r["variant"], r["seed"], f"{r['run_name']} ({r['run_id'][:8]})", f"{r['test_accuracy']:.4f}",
         f"{r['machine']['host']}, {r['machine']['device']}, {r['machine']['threads']} threads"]
        for r in document["runs"]]))
    text.append(f"\nData: DVC digest {document['data_digest']}; shared params hash {document['params_hash_shared']}.\n")
    return "".join(text)
