import csv

import torch

from birdmesh.checkpoint import read_checkpoint, save_checkpoint
from birdmesh.training import append_csv_row, drop_csv_rows_after, linear_decay_lr, seed_run_from_weights


def test_init_from_weights_seeds_a_run_once(tmp_path):
    weights = tmp_path / "shipped.pt"
    state = {"w": torch.tensor([1.5, -2.25]).half(), "count": torch.tensor(3)}
    save_checkpoint(weights, {"train": {"lr": 1.0}}, state, step=750, version=2)
    last = tmp_path / "run" / "last.pt"
    seed_run_from_weights(weights, last)
    ckpt = read_checkpoint(last)
    assert ckpt["step"] == 750 and ckpt["version"] == 2
    assert ckpt["state_dict"]["w"].dtype == torch.float32
    assert torch.equal(ckpt["state_dict"]["w"], torch.tensor([1.5, -2.25]))
    assert torch.equal(ckpt["state_dict"]["count"], torch.tensor(3))
    assert "optimizer" not in ckpt  # the run starts with fresh optimizer state

    # An existing run wins: repeating the command resumes it instead of resetting it.
    save_checkpoint(last, {}, {"w": torch.zeros(2)}, step=900)
    seed_run_from_weights(weights, last)
    assert read_checkpoint(last)["step"] == 900


def test_resume_drops_log_rows_of_the_lost_steps(tmp_path):
    log = tmp_path / "log.csv"
    for step in (25, 50, 75, 100):  # the run logged up to 100, then died; its checkpoint holds step 50
        append_csv_row(log, {"step": step, "loss": f"{1 / step:.5f}"})
    drop_csv_rows_after(log, 50)
    with log.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["step"] for row in rows] == ["25", "50"] and rows[1]["loss"] == "0.02000"
    append_csv_row(log, {"step": 75, "loss": "0.5"})  # the resumed run logs step 75 once
    with log.open(newline="") as f:
        assert [row["step"] for row in csv.DictReader(f)] == ["25", "50", "75"]
    drop_csv_rows_after(tmp_path / "missing.csv", 10)  # a run without a log yet
    assert not (tmp_path / "missing.csv").exists()


def test_a_new_log_column_widens_the_file_instead_of_shifting_values(tmp_path):
    log = tmp_path / "log.csv"
    append_csv_row(log, {"step": 25, "loss": "0.5", "mask": "0.1"})
    append_csv_row(log, {"step": 50, "loss": "0.4", "chamfer": "0.08", "mask": "0.09"})  # a term added on resume
    append_csv_row(log, {"step": 75, "loss": "0.3"})
    with log.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["step", "loss", "mask", "chamfer"]
    assert rows[0] == {"step": "25", "loss": "0.5", "mask": "0.1", "chamfer": ""}
    assert rows[1] == {"step": "50", "loss": "0.4", "mask": "0.09", "chamfer": "0.08"}
    assert rows[2] == {"step": "75", "loss": "0.3", "mask": "", "chamfer": ""}


def test_linear_decay_lr_holds_then_falls_to_the_final_factor():
    lr = 1e-4
    assert linear_decay_lr(0, lr, 100, 200, 0.05) == lr
    assert linear_decay_lr(100, lr, 100, 200, 0.05) == lr
    assert abs(linear_decay_lr(150, lr, 100, 200, 0.05) - lr * (1 - 0.5 * 0.95)) < 1e-15  # halfway down
    assert abs(linear_decay_lr(200, lr, 100, 200, 0.05) - 5e-6) < 1e-15
    assert abs(linear_decay_lr(900, lr, 100, 200, 0.05) - 5e-6) < 1e-15  # held after the end (a longer resume)
    assert linear_decay_lr(150, lr, 200, 200, 0.05) == lr  # an empty decay window: constant
