"""The team set-up of README "Team set-up" and docs/team.md, end to end, with real servers on 127.0.0.1.

Servers (tests/servers.py, started and stopped here): PostgreSQL with a password, moto's S3 server, and
`mlflow server` on both (runs in PostgreSQL, artifacts in s3://leaflab/mlflow); a bare git repository in a temp
folder is the team's git remote. Two clones of a tiny pipeline play two machines:

  A  dvc repro (variant pcen) against the shared server; git push; dvc push  (DVC remote on S3)
  B  git clone; dvc pull → byte-identical outputs; dvc status / repro: nothing to do
  A  dvc exp run + dvc exp push;  B  dvc exp pull, exp show, metrics diff   (experiments between machines)
  B  adds variant tbn, trains it against the same server; leaflab compare on both machines; artifacts and the model
     registry read from B, which has no S3 credentials of its own          (shared MLflow server)
and no credential (S3 keys, database password) shows in any console output, MLflow param or tag, dvc.lock,
report or the git history. Multi-node: two torchrun "nodes" (c10d rendezvous, gloo) train one model as one
process would; one node killed → one clear error line; the rerun resumes from the last checkpoint.

The user-facing commands are run as README lists them (USER_COMMANDS, through bash, $VARIABLES from the
environment); test_readme_lists_the_commands_this_test_runs keeps the two in step.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import torch
import yaml

import servers
from conftest import repo_params
from test_pipeline_e2e import TINY
from test_training_stage import checkpoint_epoch, final_epoch
from test_training_support import free_port, make_workdir, run_stage, tiny_params, write_params

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUCKET = "leaflab"
EXPERIMENT = "lr-3e-3"
A_VARIANT, B_VARIANT = "pcen", "tbn"  # A's params hold pcen only; B adds tbn and trains it

# What a team member types (README "Team set-up" lists exactly these); $VARIABLES come from the environment.
USER_COMMANDS = {
    "remote_add": "dvc remote add -d storage s3://leaflab/dvc",
    "remote_endpoint": "dvc remote modify storage endpointurl $S3_ENDPOINT",
    "repro": "dvc repro",
    "commit": "git add -A && git commit -m 'dvc repro: models, reports, dvc.lock'",
    "git_push": "git push origin main",
    "push": "dvc push",
    "clone": "git clone $GIT_REMOTE leaflab",
    "local_key_id": "dvc remote modify --local storage access_key_id $AWS_ACCESS_KEY_ID",
    "local_secret": 'dvc remote modify --local storage secret_access_key -- "$AWS_SECRET_ACCESS_KEY"',  # a key may start with -
    "pull": "dvc pull",
    "status": "dvc status",
    "exp_run": f"dvc exp run -n {EXPERIMENT} -S train.lr=0.003",
    "exp_push": f"dvc exp push origin {EXPERIMENT}",
    "exp_pull": f"dvc exp pull origin {EXPERIMENT}",
    "exp_show": "dvc exp show",
    "metrics_diff": f"dvc metrics diff HEAD {EXPERIMENT}",
    "compare": "leaflab compare",
    "compare_experiment": f"leaflab compare --dvc-exp {EXPERIMENT}",
    "torchrun": "torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint $RDZV_ENDPOINT "
                "stages/train.py $VARIANT",
}


def sha256_tree(root: Path, *paths: str) -> dict[str, str]:
    """{relative path: sha256} of every file under root/paths."""
    found = {}
    for name in paths:
        base = root / name
        for path in sorted([base] if base.is_file() else base.rglob("*")):
            if path.is_file():
                found[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def model_dir_md5(lock: dict) -> str:
    """The md5 dvc.lock records for runs/<A's variant> (the hash of its directory listing, ending in .dir)."""
    return next(out["md5"] for out in lock["stages"][f"train@{A_VARIANT}"]["outs"]
                if out["path"] == f"runs/{A_VARIANT}")


def run_id_of(machine: Path, variant: str, seed: int = 0) -> str:
    """The MLflow run of a variant's seed, as the train stage recorded it in runs/<variant>/mlflow_run.json."""
    runs = json.loads((machine / f"runs/{variant}/mlflow_run.json").read_text())["runs"]
    return next(entry["run_id"] for entry in runs if entry["seed"] == seed)


def experiment_names(shown: list) -> set[str]:
    """The experiment names in `dvc exp show --json` (a list of baselines, each with its experiments)."""
    return {exp.get("name") for baseline in shown for exp in (baseline.get("experiments") or [])}


def table_rows(output: str, column: str) -> dict[str, dict[str, str]]:
    """The rows of the `leaflab compare` table that has `column` (its runs, or its variants), keyed by variant:
    {variant: {column header: cell}}."""
    def cells(line: str, bar: str) -> list[str]:
        return [cell.strip() for cell in line.strip().strip(bar).split(bar)]

    tables, header = [], None
    for line in output.splitlines():
        if "┃" in line:
            header = cells(line, "┃")
            tables.append((header, []))
        elif line.startswith("│") and header:
            tables[-1][1].append(dict(zip(header, cells(line, "│"))))
    (rows,) = [rows for header, rows in tables if column in header]
    return {row["variant"]: row for row in rows}


# ---- the servers and the two machines --------------------------------------------------------------------------
@dataclass
class Team:
    root: Path
    s3_endpoint: str
    tracking_uri: str
    db: servers.Postgres
    credentials: dict[str, str]
    transcripts: list[str] = field(default_factory=list)  # every command's console output, for the secret grep

    @property
    def mlflow_log(self) -> Path:
        return self.root / "logs/mlflow.log"

    @property
    def a(self) -> Path:
        return self.root / "a"

    @property
    def b(self) -> Path:
        return self.root / "b" / "leaflab"

    @property
    def git_remote(self) -> Path:
        return self.root / "origin.git"

    def env(self, machine: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
        """A team member's shell: the project's tools on PATH, the shared tracking server, the S3 endpoint; the
        S3 credentials in the environment on A only (B keeps them in .dvc/config.local); no ~/.aws."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "AWS_"))}
        env.update(PATH=f"{BIN}:{env['PATH']}", MLFLOW_TRACKING_URI=self.tracking_uri, S3_ENDPOINT=self.s3_endpoint,
                   GIT_REMOTE=str(self.git_remote), AWS_CONFIG_FILE=str(self.root / "no-aws-config"),
                   AWS_SHARED_CREDENTIALS_FILE=str(self.root / "no-aws-credentials"), DVC_NO_ANALYTICS="1",
                   MPLBACKEND="Agg", PYTHONUNBUFFERED="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t.invalid",
                   GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t.invalid")
        if machine == self.a:
            env.update(self.credentials)
        env.update(extra or {})
        return env

    def run(self, machine: Path, command: str, extra_env: dict[str, str] | None = None, timeout: int = 900,
            cwd: Path | None = None, expect_failure: bool = False) -> str:
        """Run a shell command on `machine` (in its folder); fail with its output unless it succeeds (or, with
        expect_failure, unless it fails)."""
        started = time.monotonic()
        result = subprocess.run(["bash", "-c", command], cwd=cwd or machine, env=self.env(machine, extra_env),
                                capture_output=True, text=True, timeout=timeout)
        output = result.stdout + result.stderr
        self.transcripts.append(f"$ {command}\n{output}")
        name = "A" if machine == self.a else "B"
        with open(self.root / "transcript.log", "a") as log:  # for a look after a failure: command, time, output
            log.write(f"{name}$ {command}   ({time.monotonic() - started:.1f} s)\n{output}\n")
        if expect_failure:
            assert result.returncode != 0, f"{command} succeeded on machine {name}:\n{output[-6000:]}"
        else:
            assert result.returncode == 0, f"{command} failed on machine {name}:\n{output[-6000:]}"
        return output

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """PostgreSQL, moto S3 and mlflow server (artifacts on S3), the bucket, and the bare git remote."""
    root = tmp_path_factory.mktemp("team")
    credentials = {"AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
                   "AWS_SECRET_ACCESS_KEY": "-" + secrets.token_urlsafe(30)}  # a leading - as real keys may have
    with servers.postgres() as db, servers.s3_server(root / "logs/s3.log") as s3:
        servers.s3_client(s3, *credentials.values()).create_bucket(Bucket=BUCKET)
        server_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
        server_env.update(credentials, PGPASSWORD=db.password, MLFLOW_S3_ENDPOINT_URL=s3,
                          AWS_CONFIG_FILE=str(root / "no-aws-config"),
                          AWS_SHARED_CREDENTIALS_FILE=str(root / "no-aws-credentials"))
        with servers.mlflow_server(db.uri, f"s3://{BUCKET}/mlflow", root / "logs/mlflow.log", server_env) as uri:
            subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(root / "origin.git")], check=True)
            yield Team(root, s3, uri, db, credentials)


@pytest.fixture(scope="module")
def machine_a(team) -> dict[str, str]:
    """Machine A: the project with tiny params (one variant), the DVC remote set up once, `dvc repro` against the
    shared server, then pushed to git and to the DVC remote. Returns the sha256 of its outputs as pushed."""
    a = team.a
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        if (REPO / name).is_file() and not name.startswith(("tests/", "benchmarks/", "reports/")):
            (a / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, a / name)
    params = repo_params({**TINY, "train": {**TINY["train"], "seeds": [0]},
                          "variants": {A_VARIANT: {"filterbank": "efficientleaf", "compression": "pcen"}}})
    (a / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    team.run(a, "git init -q -b main && git remote add origin $GIT_REMOTE")
    team.run(a, USER_COMMANDS["remote_add"])
    team.run(a, USER_COMMANDS["remote_endpoint"])
    team.run(a, USER_COMMANDS["repro"])
    team.run(a, USER_COMMANDS["commit"])
    team.run(a, USER_COMMANDS["git_push"])
    team.run(a, USER_COMMANDS["push"])
    return sha256_tree(a, "data/prepared", "runs", "reports", "dvc.lock")


@dataclass
class MachineB:
    pulled: dict[str, str]  # sha256 of the outputs right after dvc pull
    status: str             # `dvc status` then
    repro: str              # `dvc repro` then


@pytest.fixture(scope="module")
def machine_b(team, machine_a) -> MachineB:
    """Machine B: a clone of the git remote, its S3 credentials in .dvc/config.local, then `dvc pull`."""
    team.b.parent.mkdir()
    team.run(team.b, USER_COMMANDS["clone"], cwd=team.b.parent)
    team.run(team.b, USER_COMMANDS["local_key_id"], extra_env=team.credentials)
    team.run(team.b, USER_COMMANDS["local_secret"], extra_env=team.credentials)
    team.run(team.b, USER_COMMANDS["pull"])
    pulled = sha256_tree(team.b, "data/prepared", "runs", "reports", "dvc.lock")
    return MachineB(pulled, team.run(team.b, USER_COMMANDS["status"]), team.run(team.b, USER_COMMANDS["repro"]))


@dataclass
class Experiment:
    shown: dict       # `dvc exp show --json` on B
    show_table: str   # `dvc exp show` on B
    diff: dict        # `dvc metrics diff --json` on B
    diff_table: str   # `dvc metrics diff` on B
    compare: str      # `leaflab compare --filter "tags.dvc_exp_name = '…'"` on B


@pytest.fixture(scope="module")
def experiment(team, machine_b) -> Experiment:
    """Machine A runs an experiment and pushes it; machine B pulls it."""
    team.run(team.a, USER_COMMANDS["exp_run"])
    team.run(team.a, USER_COMMANDS["exp_push"])
    team.run(team.b, USER_COMMANDS["exp_pull"])
    return Experiment(json.loads(team.run(team.b, USER_COMMANDS["exp_show"] + " --json 2>/dev/null")),
                      team.run(team.b, USER_COMMANDS["exp_show"]),
                      json.loads(team.run(team.b, USER_COMMANDS["metrics_diff"] + " --json 2>/dev/null")),
                      team.run(team.b, USER_COMMANDS["metrics_diff"]),
                      team.run(team.b, USER_COMMANDS["compare_experiment"]))


@dataclass
class SharedServer:
    compare_a: str   # `leaflab compare` on A
    compare_b: str   # on B
    compare_db: str  # on B, reading the database directly (password in MLFLOW_TRACKING_URI): refused, see below


@pytest.fixture(scope="module")
def shared_server(team, machine_b) -> SharedServer:
    """Machine B adds a variant and trains it against the same server; both machines compare."""
    params = yaml.safe_load((team.b / "params.yaml").read_text())
    params["variants"][B_VARIANT] = {"filterbank": "efficientleaf", "compression": "tbn"}
    (team.b / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    team.run(team.b, USER_COMMANDS["repro"])
    db_uri = team.db.uri.replace(f"//{team.db.user}@", f"//{team.db.user}:{team.db.password}@")
    return SharedServer(team.run(team.a, USER_COMMANDS["compare"]), team.run(team.b, USER_COMMANDS["compare"]),
                        team.run(team.b, USER_COMMANDS["compare"], extra_env={"MLFLOW_TRACKING_URI": db_uri},
                                 expect_failure=True))


# ---- 2. DVC remote -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_machine_pulls_identical_outputs_and_has_nothing_to_run(machine_a, machine_b):
    assert any(name.startswith("data/prepared/") for name in machine_a)
    assert f"runs/{A_VARIANT}/seed-0/model.pt" in machine_a and f"reports/{A_VARIANT}/metrics.json" in machine_a
    assert machine_b.pulled == machine_a  # every file, byte for byte
    assert "Data and pipelines are up to date" in machine_b.status
    assert "Running stage" not in machine_b.repro and "Data and pipelines are up to date" in machine_b.repro


@pytest.mark.slow
def test_the_dvc_remote_lives_in_the_bucket_and_credentials_outside_git(team, machine_b):
    objects = servers.s3_client(team.s3_endpoint, *team.credentials.values()).list_objects_v2(
        Bucket=BUCKET, Prefix="dvc/files/md5/")
    lock = yaml.safe_load((team.b / "dvc.lock").read_text())
    model_md5 = model_dir_md5(lock)
    keys = {o["Key"] for o in objects.get("Contents", [])}
    assert f"dvc/files/md5/{model_md5[:2]}/{model_md5[2:]}" in keys
    config = (team.b / ".dvc/config").read_text()
    assert "url = s3://leaflab/dvc" in config and f"endpointurl = {team.s3_endpoint}" in config
    assert team.credentials["AWS_SECRET_ACCESS_KEY"] in (team.b / ".dvc/config.local").read_text()
    ignored = subprocess.run(["git", "check-ignore", ".dvc/config.local"], cwd=team.b, capture_output=True)
    assert ignored.returncode == 0  # the per-machine credentials never reach git


# ---- 4. experiments between machines ---------------------------------------------------------------------------
@pytest.mark.slow
def test_an_experiment_moves_to_the_other_machine_with_its_numbers(team, experiment):
    assert EXPERIMENT in experiment_names(experiment.shown), experiment.shown
    assert EXPERIMENT in experiment.show_table
    exp_metrics = json.loads((team.a / f"reports/{A_VARIANT}/metrics.json").read_text())  # A's workspace: the exp
    base_metrics = json.loads((team.b / f"reports/{A_VARIANT}/metrics.json").read_text())
    loss = experiment.diff[f"reports/{A_VARIANT}/metrics.json"]["test_loss"]
    assert loss["old"] == pytest.approx(base_metrics["test_loss"])
    assert loss["new"] == pytest.approx(exp_metrics["test_loss"]) and loss["new"] != loss["old"]
    assert "test_loss" in experiment.diff_table
    # the experiment's outputs came along through the DVC remote: its model directory is in B's cache
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=team.b,
                          capture_output=True, text=True, check=True).stdout.split()
    (ref,) = [r for r in refs if r.endswith(f"/{EXPERIMENT}")]
    lock = yaml.safe_load(subprocess.run(["git", "show", f"{ref}:dvc.lock"], cwd=team.b, capture_output=True,
                                         text=True, check=True).stdout)
    md5 = model_dir_md5(lock)
    assert (team.b / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).is_file()
    # its MLflow runs carry the experiment's name, so `dvc exp show` and the MLflow UI link up
    client = team.client()
    runs = client.search_runs([client.get_experiment_by_name("leaflab").experiment_id],
                              f"tags.dvc_exp_name = '{EXPERIMENT}' and tags.`leaflab.kind` = 'training'")
    (run,) = runs
    listed = table_rows(experiment.compare, "run")  # `leaflab compare --dvc-exp …`: exactly that run
    assert list(listed) == [A_VARIANT] and run.info.run_id in listed[A_VARIANT]["run"], experiment.compare
    assert run.data.tags["variant"] == A_VARIANT and run.data.params["train.lr"] == "0.003"
    baseline = subprocess.run(["git", "rev-parse", "HEAD"], cwd=team.b, capture_output=True, text=True).stdout.strip()
    assert run.data.tags["dvc_exp_baseline_rev"] == baseline  # the commit both machines share
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_loss"] == pytest.approx(exp_metrics["test_loss"])


# ---- 3. the shared MLflow server -------------------------------------------------------------------------------
@pytest.mark.slow
def test_both_machines_log_to_one_server_and_see_each_others_runs(team, shared_server):
    a_run = run_id_of(team.b, A_VARIANT)  # pulled: A's
    b_run = run_id_of(team.b, B_VARIANT)
    client = team.client()
    a_tags, b_tags = client.get_run(a_run).data.tags, client.get_run(b_run).data.tags
    assert a_tags["variant"] == A_VARIANT and b_tags["variant"] == B_VARIANT
    assert a_tags["host"] and a_tags["cpu"] and a_tags["device"] == "cpu"  # which machine measured what
    b_accuracy = json.loads((team.b / f"reports/{B_VARIANT}/metrics.json").read_text())["test_accuracy"]
    for output in (shared_server.compare_a, shared_server.compare_b):
        runs, variants = table_rows(output, "run"), table_rows(output, "seeds")
        assert set(variants) == {A_VARIANT, B_VARIANT}, output
        assert a_run in runs[A_VARIANT]["run"] and b_run in runs[B_VARIANT]["run"]
        # B's run, as B's evaluate stage measured it
        assert variants[B_VARIANT]["test accuracy (95 % CI)"] == f"{b_accuracy:.3f}"
        assert f"{B_VARIANT} − {A_VARIANT}: " in output  # the verdict, on either machine
    assert f"store: {team.tracking_uri}" in shared_server.compare_a
    # the database alone holds runs and metrics, but the server keeps the artifacts (mlflow-artifacts:/), which
    # only it serves: reading the database directly, compare says so in one line and names the fix
    masked = f"postgresql+psycopg2://{team.db.user}:***@127.0.0.1:{team.db.port}/{team.db.database}"
    (line,) = [l for l in shared_server.compare_db.splitlines() if l.startswith("error:")]
    assert "keeps its artifacts on the tracking server" in line and masked in line, shared_server.compare_db
    assert "set MLFLOW_TRACKING_URI to the server's http(s):// address" in line
    assert team.db.password not in shared_server.compare_db


@pytest.mark.slow
def test_artifacts_land_in_the_bucket_and_download_on_the_other_machine(team, shared_server, tmp_path, monkeypatch):
    from leaflab.models import load_trained

    run_id = run_id_of(team.b, A_VARIANT)  # trained on A
    client = team.client()  # B's view: the server's URI, no S3 keys (the server signs download URLs for it)
    assert "AWS_SECRET_ACCESS_KEY" not in os.environ
    checkpoint = Path(client.download_artifacts(run_id, "checkpoints/final.pt", str(tmp_path / "signed")))
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "false")  # streamed through the server instead
    streamed = Path(client.download_artifacts(run_id, "checkpoints/final.pt", str(tmp_path / "streamed")))
    assert streamed.read_bytes() == checkpoint.read_bytes()
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    model, _ = load_trained(team.b / f"runs/{A_VARIANT}/seed-0/model.pt")  # the model DVC pulled on B
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    image = next(p for p in (a.path for a in client.list_artifacts(run_id, "images")) if p.endswith(".png"))
    assert Path(client.download_artifacts(run_id, image, str(tmp_path))).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keys = [o["Key"] for o in servers.s3_client(team.s3_endpoint, *team.credentials.values()).list_objects_v2(
        Bucket=BUCKET, Prefix="mlflow/")["Contents"]]
    assert any(k.endswith(f"/{run_id}/artifacts/checkpoints/final.pt") for k in keys)


@pytest.mark.slow
def test_the_model_registry_works_against_postgresql(team, shared_server, tmp_path):
    import psycopg2

    run_id = run_id_of(team.b, A_VARIANT)
    client, name = team.client(), f"leaflab-team-{A_VARIANT}"
    client.create_registered_model(name)
    version = client.create_model_version(name, f"{client.get_run(run_id).info.artifact_uri}/checkpoints",
                                          run_id=run_id)
    client.set_registered_model_alias(name, "shared", version.version)
    assert client.get_model_version_by_alias(name, "shared").run_id == run_id
    # machine B resolves the alias through the registry and downloads what it points at
    team.run(team.b, f"mlflow artifacts download --artifact-uri models:/{name}@shared --dst-path {tmp_path / 'm'}")
    direct = Path(client.download_artifacts(run_id, "checkpoints/final.pt", str(tmp_path / "d")))
    assert (tmp_path / "m/final.pt").read_bytes() == direct.read_bytes()
    with psycopg2.connect(host="127.0.0.1", port=team.db.port, user=team.db.user, password=team.db.password,
                          dbname=team.db.database) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT version, run_id FROM model_versions WHERE name = %s", [name])
        assert cursor.fetchall() == [(int(version.version), run_id)]


# ---- 6. credentials --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_no_credential_in_consoles_mlflow_dvc_lock_reports_or_git(team, experiment, shared_server, tmp_path):
    places: dict[str, str] = {"console output": "\n".join(team.transcripts)}
    places["mlflow server log"] = team.mlflow_log.read_text(errors="replace")
    client = team.client()
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            places[f"MLflow params/tags of {run.info.run_name}"] = json.dumps([run.data.params, run.data.tags])
            if "config.json" in {a.path for a in client.list_artifacts(run.info.run_id)}:
                config = client.download_artifacts(run.info.run_id, "config.json", str(tmp_path / run.info.run_id))
                places[f"config.json of {run.info.run_name}"] = Path(config).read_text()
    for machine in (team.a, team.b):
        for path in [machine / "dvc.lock", machine / ".dvc/config", *(machine / "reports").rglob("*"),
                     *(machine / "runs").rglob("*.json")]:
            if path.is_file():
                places[str(path.relative_to(team.root))] = path.read_bytes().decode(errors="replace")
    places["git history"] = subprocess.run(["git", "log", "-p", "--all"], cwd=team.git_remote, capture_output=True,
                                           text=True, check=True).stdout
    assert len(places) > 20
    for secret in (team.credentials["AWS_SECRET_ACCESS_KEY"], team.credentials["AWS_ACCESS_KEY_ID"],
                   team.db.password):
        leaks = [where for where, text in places.items() if secret in text]
        assert not leaks, f"a credential shows in {leaks}"


# ---- 5. several nodes --------------------------------------------------------------------------------------------
NODE_EPOCHS = 8


def start_node(workdir: Path, variant: str, endpoint: str, log: Path) -> subprocess.Popen:
    """One "node": torchrun as README writes it, in its own session (so it can be killed as a whole)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RANK", "WORLD_SIZE")}
    env.update(PATH=f"{BIN}:{env['PATH']}", RDZV_ENDPOINT=endpoint, VARIANT=variant, OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    with open(log, "w") as handle:
        return subprocess.Popen(["bash", "-c", "exec " + USER_COMMANDS["torchrun"]], cwd=workdir, env=env,
                                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def kill_node(node: subprocess.Popen) -> None:
    """SIGKILL a node: its torchrun agent and the training processes it started (they run in sessions of their
    own, so killing the agent's group alone would leave them running)."""
    agent = psutil.Process(node.pid)
    for process in [agent, *agent.children(recursive=True)]:
        process.send_signal(signal.SIGKILL)


def run_two_nodes(workdir: Path, variant: str, kill_after_epoch: int | None = None) -> tuple[list[int], str]:
    """Start node 0 (it hosts the rendezvous store), then node 1; optionally SIGKILL node 1 once the checkpoint
    holds `kill_after_epoch`. Returns both exit codes and both consoles."""
    port = free_port()
    logs = [workdir / f"node{i}-{variant}.log" for i in (0, 1)]
    nodes = [start_node(workdir, variant, f"127.0.0.1:{port}", logs[0])]
    try:
        deadline = time.monotonic() + 120
        while not servers.port_open(port) and nodes[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        nodes.append(start_node(workdir, variant, f"127.0.0.1:{port}", logs[1]))
        if kill_after_epoch is not None:
            last = workdir / f"checkpoints/{variant}/seed-0/last.pt"
            deadline = time.monotonic() + 300
            while checkpoint_epoch(last) < kill_after_epoch and nodes[1].poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            # node 0's training process may outlive its agent by a moment (its own session) and still write a
            # checkpoint: wait for it too before anyone reads what the kill left
            survivors = psutil.Process(nodes[0].pid).children(recursive=True)
            kill_node(nodes[1])
        else:
            survivors = []
        codes = [node.wait(timeout=300) for node in nodes]
        _, alive = psutil.wait_procs(survivors, timeout=120)
        assert not alive, f"training processes of node 0 still running: {alive}"
    finally:
        for node in nodes:
            if node.poll() is None:
                kill_node(node)
                node.wait()
    return codes, "\n".join(log.read_text() for log in logs)


def final_state(path: Path) -> dict[str, torch.Tensor]:
    from leaflab.models import load_trained

    return load_trained(path)[0].state_dict()


@pytest.mark.slow
def test_two_nodes_train_like_one_process_and_resume_after_a_node_dies(tmp_path):
    from mlflow import MlflowClient

    params = tiny_params(epochs=NODE_EPOCHS, threads=1)
    params["model"]["dropout"] = 0.0  # dropout masks are drawn per process
    params["variants"]["t3"] = params["variants"]["t"]
    workdir = make_workdir(tmp_path)
    write_params(workdir, params)
    single = run_stage(workdir, "t")
    assert single.returncode == 0, single.stderr
    codes, output = run_two_nodes(workdir, "t2")
    assert codes == [0, 0], output
    one, two = (final_epoch(workdir / f"reports/{v}/history.csv") for v in ("t", "t2"))
    # TBN's BatchNorm over both nodes. The reduction order differs (two half batches), and the rounding grows over
    # the epochs with the CPU's SIMD path: 0.05 % apart on an AMD EPYC, 0.12 % on an Intel Xeon (train loss)
    for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
        assert two[key] == pytest.approx(one[key], rel=5e-3, abs=1e-4), key
    # the weights too, up to rounding: summing the gradients of two half batches instead of one batch changes the
    # last bits, and Adam, which steps each weight by about lr whatever its gradient's size, turns that into
    # differences of about one step where gradients are near zero; BatchNorm's running statistics follow the
    # weights (measured after 4 epochs: ≤ 0.1 % apart on an AMD EPYC; on an Intel Xeon up to 1.9 lr, in one
    # classifier weight)
    reference, two_state = (final_state(workdir / f"runs/{v}/seed-0/model.pt") for v in ("t", "t2"))
    for key, value in two_state.items():
        assert torch.allclose(value.double(), reference[key].double(), rtol=5e-3,
                              atol=3 * params["train"]["lr"]), key

    # node 1 dies mid-training: node 0 stops with one line; the rerun resumes where the checkpoint was
    codes, output = run_two_nodes(workdir, "t3", kill_after_epoch=1)
    stopped_after = checkpoint_epoch(workdir / "checkpoints/t3/seed-0/last.pt")
    assert codes[1] == -signal.SIGKILL and codes[0] != 0, output
    assert 1 <= stopped_after < NODE_EPOCHS - 1, "the kill came too late to test a resume"
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "lost the other processes" in errors[0] and "resumes from the last checkpoint" \
        in errors[0], output
    assert not re.search(r"^\[rank\d\]:.*Traceback", output, re.MULTILINE), output  # no worker traceback
    codes, output = run_two_nodes(workdir, "t3")
    assert codes == [0, 0], output
    assert f"resuming after epoch {stopped_after + 1}" in output  # the checkpoint's epoch index counts from 0
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("tests").experiment_id
    (run,) = client.search_runs([experiment_id], "attributes.run_name = 't3'")
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
    assert steps == list(range(NODE_EPOCHS))  # every epoch once, across the kill
    resumed = final_epoch(workdir / "reports/t3/history.csv")
    for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):  # as if never interrupted
        assert resumed[key] == two[key], key
    assert all(torch.equal(value, two_state[key]) for key, value in final_state(workdir / "runs/t3/seed-0/model.pt").items())


# ---- start-up checks and the README --------------------------------------------------------------------------
def test_device_choices_for_several_processes_are_checked_before_joining(monkeypatch):
    from leaflab import distributed
    from leaflab.errors import LeaflabError

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # two nodes, one process each
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LeaflabError, match="train.device = 'cuda' but no CUDA device"):
        distributed.setup("cuda")
    with pytest.raises(LeaflabError, match="several nodes .* set train.device to cuda \\(nccl\\) or cpu"):
        distributed.setup("auto")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # one node, two processes, one GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    with pytest.raises(LeaflabError, match="2 processes on this node but it has 1 CUDA device.* --nproc-per-node 1"):
        distributed.setup("cuda")
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: False)
    with pytest.raises(LeaflabError, match="needs nccl, which this torch build lacks"):
        distributed.setup("cuda")
    assert not torch.distributed.is_initialized()


def test_a_lost_peer_becomes_one_line_and_other_errors_pass_through():
    from leaflab.distributed import Context, lost_peer_error

    gloo = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
                        "[127.0.0.1]:7081: Connection reset by peer. This is typically caused by a remote worker")
    two = Context(rank=1, world_size=2)
    assert str(lost_peer_error(gloo, two)) == (
        "training process 1 of 2 lost the other processes of the job (Read error [127.0.0.1]:7081: Connection "
        "reset by peer): a process or node stopped; start the same torchrun command again on every node and "
        "training resumes from the last checkpoint")
    assert "NCCL error" in str(lost_peer_error(RuntimeError("NCCL error in: …, unhandled system error"), two))
    assert lost_peer_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), two) is None
    assert lost_peer_error(RuntimeError("ProcessGroupGloo does not support reduce_scatter"), two) is None
    assert lost_peer_error(gloo, Context()) is None  # a single process has no peers to lose


def test_readme_lists_the_commands_this_test_runs():
    readme = (REPO / "README.md").read_text()
    assert "## Team set-up" in readme
    section = readme.split("## Team set-up", 1)[1].split("\n## ", 1)[0]
    missing = [command for command in USER_COMMANDS.values() if command not in section]
    assert not missing, f"README's Team set-up section lacks {missing}"
    assert "docs/team.md" in section
