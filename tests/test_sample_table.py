"""Transcripts go to wandb as a table (step, prompt, completion, reward and its components) beside
samples.jsonl: what MetricsLogger hands a wandb run, and (offline wandb, the real library) what it writes."""

import json

import pytest

from rlreason.trainer.metrics import MetricsLogger, sample_rows

SAMPLES_1 = [
    {"id": 7, "prompt": [{"role": "user", "content": "What is 2 + 3?"}], "answer": "5",
     "transcript": "It is \\boxed{5}", "reward": 1.25, "components": {"math": 1.0, "boxed_format": 0.25}},
    {"id": "b", "prompt": "plain 4 + 4", "transcript": "8?", "reward": 0.0, "components": {"math": 0.0}},
]
SAMPLES_2 = [{"id": 9, "prompt": "1 + 1", "transcript": "\\boxed{2}", "reward": 1.5,
              "components": {"math": 1.0, "boxed_format": 0.5}}]
ROWS = [
    [1, "7", "user: What is 2 + 3?", "It is \\boxed{5}", 1.25, 0.25, 1.0],
    [1, "b", "plain 4 + 4", "8?", 0.0, None, 0.0],
    [2, "9", "1 + 1", "\\boxed{2}", 1.5, 0.5, 1.0],
]
COLUMNS = ["step", "id", "prompt", "completion", "reward", "reward/boxed_format", "reward/math"]


class StubRun:
    def __init__(self):
        self.logged = []

    def log(self, row, step=None):
        self.logged.append((step, row))


def test_sample_rows_by_hand():
    assert sample_rows(1, SAMPLES_1, ["boxed_format", "math"]) == ROWS[:2]


def test_logger_hands_wandb_a_growing_table(tmp_path):
    import wandb
    logger = MetricsLogger(tmp_path, config={}, use_wandb=False, project="p", name="n", resume=False)
    logger.wandb = stub = StubRun()
    logger.log_samples(1, SAMPLES_1)
    logger.log_samples(2, SAMPLES_2)
    assert [s for s, _ in stub.logged] == [1, 2]
    table = stub.logged[-1][1]["samples"]
    assert isinstance(table, wandb.Table) and table.columns == COLUMNS
    assert [list(r) for r in table.data] == ROWS
    lines = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 1, 2] and lines[0]["prompt"][0]["content"] == "What is 2 + 3?"


def test_offline_wandb_run_writes_the_table(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = MetricsLogger(tmp_path, config={"a": 1}, use_wandb=True, project="p", name="n", resume=False)
    if logger.wandb is None:
        pytest.fail("wandb did not start offline")
    logger.log(1, {"reward/total": 0.5})
    logger.log_samples(1, SAMPLES_1)
    logger.log(2, {"reward/total": 0.7})
    logger.log_samples(2, SAMPLES_2)
    logger.finish()
    files = sorted(tmp_path.glob("wandb/offline-run-*/files/media/table/samples_*.table.json"))
    assert files, list(tmp_path.rglob("*"))
    tables = [json.loads(f.read_text()) for f in files]
    assert all(t["columns"] == COLUMNS for t in tables)
    rows = [r for t in tables for r in t["data"]]
    assert rows == ROWS  # incremental: each step's file holds that step's rows only
