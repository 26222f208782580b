"""notebooks/quickstart.ipynb runs top to bottom (nbclient, a real kernel) and is kept without
outputs in git."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"

import nbformat  # noqa: E402  (test extra)


def cell_seconds(nb) -> list[float]:
    from datetime import datetime

    out = []
    for cell in nb.cells:
        timing = cell.metadata.get("execution", {})
        if "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            start, end = (datetime.fromisoformat(timing[k].replace("Z", "+00:00"))
                          for k in ("iopub.execute_input", "shell.execute_reply"))
            out.append(round((end - start).total_seconds(), 1))
    return out


def test_quickstart_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


@pytest.mark.slow
def test_quickstart_runs_top_to_bottom(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("SCALETOK_QUICKSTART_DIR", str(tmp_path))  # the kernel inherits the environment
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    print(cell_seconds(nb))  # shown on failure: where the time went
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if any(k.startswith("image/") for k in o.get("data", {}))]
    assert len(images) >= 4  # reconstructions, codebook histogram, loss curve, samples
    text = "".join(o.get("text", "") for o in outputs)
    assert "report:" in text and (tmp_path / "tokens" / "report.html").is_file()
    assert len(list((tmp_path / "tokens" / "tokens").glob("*.parquet"))) == 2
