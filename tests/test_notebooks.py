"""The notebooks: stripped in git and free of definitions (fast), and executed headless in
order with nbclient on the venv's kernel (slow), each in a kernel of its own that the test
kills, writing only under a temporary AVRAY_NOTEBOOK_WORKDIR.

Strip outputs after running a notebook locally, before committing (nbconvert comes with
JupyterLab / Notebook; the second form needs only nbformat, which the test extras install):
    jupyter nbconvert --clear-output --inplace notebooks/*.ipynb
    .venv/bin/python -c "import glob, nbformat
    for p in glob.glob('notebooks/*.ipynb'):
        nb = nbformat.read(p, as_version=4); nb.metadata.pop('widgets', None)
        for c in nb.cells:
            c.metadata.pop('execution', None)
            if c.cell_type == 'code': c.outputs, c.execution_count = [], None
        nbformat.write(nb, p)"
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time

import nbformat
import pytest

from tests.conftest import ROOT

NOTEBOOK_DIR = ROOT / "notebooks"
ORDER = ["01_quickstart.ipynb", "02_features.ipynb", "03_mlflow_runs.ipynb"]
CELL_TIMEOUT_S = 600
# Where a notebook (or a job it runs) would write in the checkout with a default path.
WATCHED = [ROOT / "data" / "notebooks", ROOT / "runs", ROOT / "mlruns", ROOT / "mlflow.db"]
DEFINITION = re.compile(r"^\s*(async\s+def|def|class)\s", re.MULTILINE)


def _code_text(nb) -> str:
    """Everything the code cells printed or displayed as text."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts += [v for k, v in out.get("data", {}).items() if k.startswith("text/")]
    return "\n".join(parts)


def _images(nb) -> int:
    return sum("image/png" in out.get("data", {})
               for cell in nb.cells for out in cell.get("outputs", []))


def test_notebooks_are_stripped_and_define_nothing():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == ORDER
    for path in sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert "widgets" not in nb.metadata, f"{path.name}: widget state saved"
        assert nb.cells[0].cell_type == "markdown", f"{path.name}: starts without a title"
        for i, cell in enumerate(nb.cells):
            where = f"{path.name} cell {i}"
            assert "execution" not in cell.metadata, f"{where}: execution timings saved"
            if cell.cell_type != "code":
                continue
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{where} has outputs: jupyter nbconvert --clear-output --inplace {path}")
            assert not DEFINITION.search(cell.source), (
                f"{where} defines a function or class: it belongs in the packages")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One work directory for the notebooks in order (03 reads the MLflow store 01 wrote)."""
    return tmp_path_factory.mktemp("notebooks")


def _kernel_env(workdir) -> dict[str, str]:
    env = {**os.environ, "AVRAY_NOTEBOOK_WORKDIR": str(workdir)}
    # The kernel starts its own Ray (address="local") and its own store; nothing of the test
    # session's (a RAY_ADDRESS, a tracking URI) may leak into it.
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "AVRAY_NOTEBOOK_TRACKING_URI"):
        env.pop(key, None)
    return env


def _exits_with_kernel(proc) -> bool:
    """multiprocessing's resource tracker (the synthetic corpus renders with a spawn pool)
    lives as long as the kernel, by design; a process that is gone counts as exited."""
    import psutil

    try:
        return "multiprocessing.resource_tracker" in " ".join(proc.cmdline())
    except psutil.NoSuchProcess:
        return True


def _execute(path, workdir):
    """Run every cell in a fresh kernel; return (notebook, processes the kernel still had
    running after its last cell). The kernel is killed on the way out, errors or not, and
    so is anything it started."""
    import psutil
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}},
                            shutdown_kernel="immediate")   # SIGKILL to its process group
    spawned: list = []
    with client.setup_kernel(env=_kernel_env(workdir)):
        kernel = psutil.Process(client.km.provisioner.pid)
        try:
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
            # The last cells shut Serve and Ray down; give their processes time to exit.
            deadline = time.time() + 30
            while time.time() < deadline and not all(
                    map(_exits_with_kernel, kernel.children(recursive=True))):
                time.sleep(0.5)
            left = [f"{p.pid} {' '.join(p.cmdline())[:200]}"
                    for p in kernel.children(recursive=True) if not _exits_with_kernel(p)]
        finally:
            spawned = kernel.children(recursive=True)
    for proc in spawned:   # after a failed cell: a Ray that left the kernel's process group
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    return nb, left


def test_kernel_is_this_venv():
    """nbclient's python3 kernel runs sys.executable (jupyter_client swaps a bare
    "python" for it), so the notebooks import this checkout's packages."""
    from jupyter_client.kernelspec import KernelSpecManager

    argv = KernelSpecManager().get_kernel_spec("python3").argv
    assert argv[0] in ("python", "python3", sys.executable), argv


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("name", ORDER)
def test_notebook_executes(name, workdir):
    before = sorted(os.listdir(NOTEBOOK_DIR))
    existed = {p: p.exists() for p in WATCHED}
    nb, left = _execute(NOTEBOOK_DIR / name, workdir)
    assert not left, f"{name} left processes running: {left}"
    text = _code_text(nb)
    if name == "01_quickstart.ipynb":
        assert "models:/avray-quickstart/1" in text
        assert re.search(r"accuracy \d\.\d{3} on \d+ questions", text), "no evaluation score"
        assert re.search(r"^A: ", text, re.MULTILINE), "no answer from the endpoint"
        assert (workdir / "eval" / "results.md").is_file()
    elif name == "02_features.ipynb":
        assert _images(nb) >= 4                        # frames, audio, cross, causal maps
        assert "(1, 16, 25, 64)" in text               # the synced slots of the 8 s clip
    else:
        assert _images(nb) >= 3                        # loss curves, per connector, families
        for connector in ("linear/both", "qformer/both", "causal_qformer/both"):
            assert connector in text
        if (workdir / "eval").is_dir():                # 01 ran first: its runs are there
            assert "tiny-instruct" in text
    # Nothing written into the checkout.
    assert sorted(os.listdir(NOTEBOOK_DIR)) == before
    assert {p: p.exists() for p in WATCHED} == existed
