"""`leaflab ui` in a real browser: two runs (variants pcen and tbn) logged through leaflab.tracking into a temporary
store, the UI started by the CLI on a free port, and Debian's headless chromium loading the experiment page, the
run pages and an image artifact: both variants, their test accuracy and the frontend images must be there."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                 "(apt-get install -y chromium)")]
ACCURACY = {"pcen": 0.8125, "tbn": 0.6875}
STARTUP_TIMEOUT_S = 120
BROWSER_STOP_MS = 60_000   # chromium stops loading (and dumps what it has) after this much real time
BROWSER_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_runs(project: Path) -> tuple[str, dict[str, str]]:
    """Two finished runs in project/mlflow.db: metrics, a per-epoch frontend image and visualize/ PNGs."""
    from leaflab import plots, tracking

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    try:
        experiment_id = tracking.client().create_experiment(
            "leaflab", artifact_location=(project / "mlartifacts").as_uri())
        rng = np.random.default_rng(0)
        centres, times = np.geomspace(60, 7800, 16), np.arange(40) * 0.01
        run_ids = {}
        for variant, accuracy in ACCURACY.items():
            channels = 1 if variant == "pcen" else 2
            run = tracking.start_run("leaflab", variant, {"variant": variant, "seed": "0"})
            for epoch in range(2):
                run.log_metrics({"val_accuracy": accuracy - 0.1 + 0.05 * epoch}, step=epoch)
                outputs = rng.normal(size=(4, channels, 16, 40))
                run.log_image_step(plots.frontend_grid_image(outputs, ["yes", "no", "up", "down"], centres, times),
                                   key="frontend", step=epoch)
            run.log_metrics({"test_accuracy": accuracy}, step=2)
            figure = plots.frontend_grid_figure(rng.normal(size=(2, channels, 16, 40)), ["yes", "no"], centres, times)
            run.log_figure(figure, "visualize/frontend_grid.png")
            run.finish()
            run_ids[variant] = run.run_id
        return experiment_id, run_ids
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """(base URL, experiment id, {variant: run id}, project dir) of `leaflab ui` serving a fresh store."""
    project = tmp_path_factory.mktemp("ui-project")
    (project / "params.yaml").write_text(yaml.safe_dump({"tracking": {"experiment": "leaflab"}}))
    (project / "dvc.yaml").write_text("stages: {}\n")
    experiment_id, run_ids = log_runs(project)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    log = open(project / "ui.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "leaflab.cli", "ui", "--port", str(port)], cwd=project,
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + STARTUP_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                pytest.fail(f"leaflab ui did not come up: {(project / 'ui.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield base, experiment_id, run_ids, project
    finally:
        stop_group(server.pid)  # the CLI and the mlflow server (and its workers) it started
        log.close()


def stop_group(pgid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM to a process group this test started (if still there); SIGKILL whatever is left after timeout_s."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        try:
            os.waitpid(pgid, os.WNOHANG)  # reap the CLI itself
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def chromium(url: str, workdir: Path, name: str, screenshot: bool) -> subprocess.Popen:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--virtual-time-budget=15000",
             f"--timeout={BROWSER_STOP_MS}", "--window-size=1400,900", f"--user-data-dir={workdir / ('profile-' + name)}"]
    output = [f"--screenshot={workdir / (name + '.png')}"] if screenshot else ["--dump-dom"]
    return subprocess.Popen([str(CHROMIUM), *flags, *output, url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, cwd=workdir, start_new_session=True)


def browse(pages: dict[str, str], workdir: Path, screenshot: str | None = None, parallel: int = 3) -> dict[str, str]:
    """Load each URL in headless chromium (`parallel` at a time) → {name: the rendered DOM}; the page named
    `screenshot` is saved as <workdir>/<name>.png instead. A browser that hangs is stopped (its whole process
    group) and tried once more."""
    doms: dict[str, str] = {}
    names = list(pages)
    for start in range(0, len(names), parallel):
        batch = names[start:start + parallel]
        for attempt in range(2):
            jobs = {name: chromium(pages[name], workdir, name, name == screenshot) for name in batch}
            failed = []
            for name, job in jobs.items():
                try:
                    doms[name] = job.communicate(timeout=BROWSER_TIMEOUT_S)[0]
                except subprocess.TimeoutExpired:
                    failed.append(name)
                finally:
                    stop_group(job.pid, timeout_s=10)
            if not failed:
                break
            if attempt == 1:
                pytest.fail(f"chromium did not finish loading {failed} within {BROWSER_TIMEOUT_S} s (twice)")
            batch = failed
    return doms


def visible_text(dom: str) -> str:
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


def test_runs_metrics_and_frontend_images_show_in_the_browser(ui, tmp_path):
    base, experiment_id, run_ids, project = ui
    pages = {"runs": f"{base}/#/experiments/{experiment_id}/runs",
             **{variant: f"{base}/#/experiments/{experiment_id}/runs/{run_id}" for variant, run_id in run_ids.items()},
             "artifacts": f"{base}/#/experiments/{experiment_id}/runs/{run_ids['tbn']}/artifacts/images",
             "image": f"{base}/#/experiments/{experiment_id}/runs/{run_ids['pcen']}/artifacts/visualize/frontend_grid.png",
             "shot": f"{base}/#/experiments/{experiment_id}/runs/{run_ids['tbn']}/artifacts/visualize/frontend_grid.png"}
    doms = browse(pages, tmp_path, screenshot="shot")
    texts = {name: visible_text(dom) for name, dom in doms.items()}

    # the experiment's runs table lists both variants
    assert "pcen" in texts["runs"] and "tbn" in texts["runs"], texts["runs"][:2000]
    assert "2 matching runs" in texts["runs"]
    # each run page shows its test accuracy and its variant tag
    for variant, accuracy in ACCURACY.items():
        assert re.search(rf"test_accuracy {accuracy:g}\b", texts[variant]), texts[variant][:2000]
        assert f"variant : {variant}" in texts[variant]
    # the per-epoch frontend images are listed as artifacts (one PNG per step) ...
    steps = re.findall(r"frontend\+step\+(\d)\+timestamp\+\d+\+[0-9a-f-]+\.png", texts["artifacts"])
    assert sorted(set(steps)) == ["0", "1"], texts["artifacts"][:2000]
    # ... and an image artifact is displayed: an <img> with the file's name, its bytes fetched from the server
    # (on a loaded machine the image can miss chromium's virtual-time budget: that page alone is loaded again)
    displayed = r'<img[^>]*alt="visualize/frontend_grid\.png"[^>]*src="blob:'
    for _ in range(2):
        if re.search(displayed, doms["image"]):
            break
        doms.update(browse({"image": pages["image"]}, tmp_path, parallel=1))
    assert re.search(displayed, doms["image"]), visible_text(doms["image"])[:2000]
    listing = json.load(urllib.request.urlopen(
        f"{base}/ajax-api/2.0/mlflow/artifacts/list?run_uuid={run_ids['pcen']}&path=visualize", timeout=10))
    assert [f["path"] for f in listing["files"]] == ["visualize/frontend_grid.png"]
    with urllib.request.urlopen(f"{base}/get-artifact?path=visualize/frontend_grid.png&run_uuid={run_ids['pcen']}",
                                timeout=10) as response:
        assert response.headers["Content-Type"] == "image/png"
        stored = project / "mlartifacts" / run_ids["pcen"] / "artifacts" / "visualize" / "frontend_grid.png"
        assert response.read() == stored.read_bytes()
    shot = tmp_path / "shot.png"
    assert shot.stat().st_size > 50_000  # a rendered page with the image, not a blank one
