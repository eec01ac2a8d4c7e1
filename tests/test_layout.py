"""leaflab.layout: the run file (written, read back, and every kind of bad content refused in one line naming
the file and the fix) and the atomic writes (exact content; a failed write leaves the old file and no temp)."""

import json
import os

import numpy as np
import pytest

from leaflab import layout as layout_module
from leaflab.errors import LeaflabError
from leaflab.layout import Layout, read_json, write_csv, write_json, write_text

RUN_A = "0123456789abcdef0123456789abcdef"
RUN_B = "fedcba9876543210fedcba9876543210"
RETRAIN = "rerun the training: dvc repro -f train@pcen"


# ---- the run file ----------------------------------------------------------------------------------------------
def test_run_file_round_trip(tmp_path):
    layout = Layout(tmp_path)
    path = layout.write_run_file("pcen", "hash123", [(0, RUN_A), (2, RUN_B)])
    assert path == tmp_path / "runs" / "pcen" / "mlflow_run.json"
    document = {"format": 2, "variant": "pcen", "params_hash": "hash123",
                "runs": [{"seed": 0, "run_id": RUN_A, "model": "runs/pcen/seed-0/model.pt"},
                         {"seed": 2, "run_id": RUN_B, "model": "runs/pcen/seed-2/model.pt"}]}
    assert path.read_text() == json.dumps(document, indent=2) + "\n"
    assert layout.read_run_file("pcen") == [
        {"seed": 0, "run_id": RUN_A, "model": tmp_path / "runs" / "pcen" / "seed-0" / "model.pt"},
        {"seed": 2, "run_id": RUN_B, "model": tmp_path / "runs" / "pcen" / "seed-2" / "model.pt"}]


def test_run_file_with_the_default_root_is_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Layout().write_run_file("tbn", "h", [(1, RUN_A)])
    assert json.loads((tmp_path / "runs/tbn/mlflow_run.json").read_text())["runs"][0]["model"] == \
        "runs/tbn/seed-1/model.pt"
    assert Layout().read_run_file("tbn")[0]["model"].as_posix() == "runs/tbn/seed-1/model.pt"


def refusal(layout: Layout, variant: str = "pcen") -> str:
    with pytest.raises(LeaflabError) as err:
        layout.read_run_file(variant)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{layout.run_file(variant)}: ")
    return message


def write_document(layout: Layout, document) -> None:
    path = layout.run_file("pcen")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def good_document(**entry) -> dict:
    run = {"seed": 0, "run_id": RUN_A, "model": "runs/pcen/seed-0/model.pt", **entry}
    return {"format": 2, "variant": "pcen", "params_hash": "h", "runs": [run]}


def test_run_file_missing(tmp_path):
    message = refusal(Layout(tmp_path))
    assert message.endswith("not found; train the variant first (dvc repro train@pcen)")


def test_run_file_invalid_json(tmp_path):
    layout = Layout(tmp_path)
    layout.run_file("pcen").parent.mkdir(parents=True)
    layout.run_file("pcen").write_text('{"runs": [\n  {"seed": 0,\n')
    message = refusal(layout)
    assert ": not valid JSON (" in message and message.endswith(RETRAIN)


@pytest.mark.parametrize("document", [[], {}, {"variant": "pcen"}, {"variant": "pcen", "runs": []},
                                      {"variant": "pcen", "runs": {"seed": 0}}, "runs", 3])
def test_run_file_without_runs(tmp_path, document):
    layout = Layout(tmp_path)
    write_document(layout, document)
    message = refusal(layout)
    assert "expected an object with a non-empty list `runs` (written by the train stage)" in message
    assert message.endswith(RETRAIN)


def test_run_file_of_another_variant(tmp_path):
    layout = Layout(tmp_path)
    document = good_document()
    document["variant"] = "tbn"
    write_document(layout, document)
    message = refusal(layout)
    assert "names variant 'tbn', not 'pcen'" in message and message.endswith(RETRAIN)


@pytest.mark.parametrize("entry", [
    {"seed": -1}, {"seed": "0"}, {"seed": 1.0}, {"seed": None}, {"seed": [0]},
    {"run_id": "xyz"}, {"run_id": RUN_A[:-1]}, {"run_id": RUN_A + "0"}, {"run_id": RUN_A.upper()},
    {"run_id": RUN_A[:-1] + "g"}, {"run_id": RUN_A + "\n"}, {"run_id": 12345},
])
def test_run_file_bad_seed_or_run_id(tmp_path, entry):
    layout = Layout(tmp_path)
    write_document(layout, good_document(**entry))
    message = refusal(layout)
    assert "bad entry" in message and "(expected seed: integer >= 0, run_id: 32 hex digits)" in message
    assert message.endswith(RETRAIN)


def test_run_file_boolean_seed_is_refused(tmp_path):
    # JSON true is a bool, and bool is an int subclass in Python: with the model path of seed 1 it must still be
    # refused as a bad seed, not read as seed True.
    layout = Layout(tmp_path)
    write_document(layout, good_document(seed=True, model="runs/pcen/seed-1/model.pt"))
    message = refusal(layout)
    assert "bad entry" in message and "(expected seed: integer >= 0, run_id: 32 hex digits)" in message


def test_run_file_duplicate_seed_is_refused(tmp_path):
    # The same seed twice would be evaluated twice and count as two seeds in the mean and interval over seeds.
    layout = Layout(tmp_path)
    document = good_document()
    document["runs"].append({"seed": 0, "run_id": RUN_B, "model": "runs/pcen/seed-0/model.pt"})
    write_document(layout, document)
    message = refusal(layout)
    assert "seed 0" in message and message.endswith(RETRAIN)


def test_run_file_entry_that_is_not_an_object(tmp_path):
    layout = Layout(tmp_path)
    write_document(layout, {"variant": "pcen", "runs": ["runs/pcen/seed-0/model.pt"]})
    assert "bad entry 'runs/pcen/seed-0/model.pt'" in refusal(layout)


@pytest.mark.parametrize("model", [
    "../../etc/passwd", "/etc/passwd", "runs/pcen/seed-1/model.pt", "runs/tbn/seed-0/model.pt",
    "runs/pcen/seed-0/../seed-0/model.pt", "./runs/pcen/seed-0/model.pt", "runs/pcen/seed-0/best.pt", None,
])
def test_run_file_model_must_be_the_layouts_own_path(tmp_path, model):
    layout = Layout(tmp_path)
    write_document(layout, good_document(model=model))
    message = refusal(layout)
    assert f"seed 0 names model {model!r}; only runs/pcen/seed-0/model.pt is accepted" in message
    assert message.endswith(RETRAIN)


def test_run_file_model_as_an_absolute_path_to_the_right_file_is_refused(tmp_path):
    layout = Layout(tmp_path)
    write_document(layout, good_document(model=str(layout.model_file("pcen", 0))))
    assert "only runs/pcen/seed-0/model.pt is accepted" in refusal(layout)


def test_run_file_one_bad_entry_refuses_the_file(tmp_path):
    layout = Layout(tmp_path)
    document = good_document()
    document["runs"].append({"seed": 1, "run_id": RUN_B, "model": "/tmp/elsewhere/model.pt"})
    write_document(layout, document)
    assert "seed 1 names model '/tmp/elsewhere/model.pt'" in refusal(layout)


# ---- paths -----------------------------------------------------------------------------------------------------
def test_layout_paths(tmp_path):
    layout = Layout(tmp_path)
    assert layout.model_file("pcen", 3) == tmp_path / "runs/pcen/seed-3/model.pt"
    assert layout.checkpoints("pcen", 3) == tmp_path / "checkpoints/pcen/seed-3"
    assert layout.summary_file("tbn") == tmp_path / "reports/summaries/tbn.json"
    assert layout.comparison("md") == tmp_path / "reports/comparison.md"
    assert layout.raw("speechcommands") == tmp_path / "data/raw/speechcommands"
    assert layout.prepared == tmp_path / "data/prepared"
    assert layout.reports("pcen") == tmp_path / "reports/pcen"


# ---- atomic writes ---------------------------------------------------------------------------------------------
def test_write_json_content(tmp_path):
    path = tmp_path / "deep" / "er" / "out.json"
    value = {"a": 1, "b": [1.5, "x"], "numpy": np.int64(7), "array": np.arange(3), "float": np.float32(0.5)}
    assert write_json(path, value) == path
    assert path.read_text() == ('{\n  "a": 1,\n  "b": [\n    1.5,\n    "x"\n  ],\n  "numpy": 7,\n  "array": [\n'
                                '    0,\n    1,\n    2\n  ],\n  "float": 0.5\n}\n')
    assert os.listdir(path.parent) == ["out.json"]


def test_write_text_and_csv_content(tmp_path):
    write_text(tmp_path / "t.txt", "héllo\nworld\n")
    assert (tmp_path / "t.txt").read_bytes() == "héllo\nworld\n".encode()
    write_csv(tmp_path / "t.csv", ["name", "value"], [["a", 1], ["b,c", 2.5], ['say "hi"', None]])
    assert (tmp_path / "t.csv").read_text() == 'name,value\na,1\n"b,c",2.5\n"say ""hi""",\n'


def test_write_replaces_the_previous_file(tmp_path):
    path = tmp_path / "x.json"
    write_json(path, {"old": 1})
    write_json(path, {"new": 2})
    assert json.loads(path.read_text()) == {"new": 2}
    assert os.listdir(tmp_path) == ["x.json"]


def test_failed_rename_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    write_json(path, {"old": 1})

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(layout_module.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_json(path, {"new": 2})
    assert path.read_text() == '{\n  "old": 1\n}\n'
    assert os.listdir(tmp_path) == ["x.json"]


def test_interrupted_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "t.csv"
    write_csv(path, ["a"], [[1]])

    def interrupt(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(layout_module.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_csv(path, ["a"], [[2]])
    assert path.read_text() == "a\n1\n"
    assert os.listdir(tmp_path) == ["t.csv"]


@pytest.mark.parametrize("value, error", [({"x": float("nan")}, ValueError), ({"x": float("inf")}, ValueError),
                                          ({"x": object()}, TypeError), ({"x": {1, 2}}, TypeError)])
def test_unencodable_json_keeps_the_old_file(tmp_path, value, error):
    path = tmp_path / "x.json"
    write_json(path, {"old": 1})
    with pytest.raises(error):
        write_json(path, value)
    assert json.loads(path.read_text()) == {"old": 1}
    assert os.listdir(tmp_path) == ["x.json"]


def test_unencodable_value_is_named(tmp_path):
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        write_json(tmp_path / "x.json", {"x": object()})
    assert not (tmp_path / "x.json").exists()


def test_read_json(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"accuracy": 0.5})
    assert read_json(path, "the metrics", "run dvc repro evaluate") == {"accuracy": 0.5}

    with pytest.raises(LeaflabError) as err:
        read_json(tmp_path / "none.json", "the metrics", "run dvc repro evaluate")
    assert str(err.value) == f"{tmp_path / 'none.json'}: not found; run dvc repro evaluate"

    path.write_text('{"accuracy": 0.5,\n')
    with pytest.raises(LeaflabError) as err:
        read_json(path, "the metrics", "run dvc repro evaluate")
    message = str(err.value)
    assert message.startswith(f"{path}: the metrics is not valid JSON (")
    assert message.endswith("); run dvc repro evaluate") and "\n" not in message
