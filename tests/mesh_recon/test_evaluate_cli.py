"""``python -m mesh_recon.evaluate``: bad options and outputs are refused before anything is evaluated."""
import pytest

import mesh_recon.evaluate as evaluate


@pytest.fixture
def no_work(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the evaluation started")
    monkeypatch.setattr(evaluate, "load_predictor", refuse)


def _run(args, capsys):
    with pytest.raises(SystemExit) as info:
        evaluate.main(args)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    return info.value.code, err


def test_existing_output_is_refused_before_evaluating(tmp_path, capsys, no_work):
    (tmp_path / "eval").mkdir()
    code, err = _run(["--out", str(tmp_path / "eval"), "--synthetic-n", "2"], capsys)
    assert code == 2 and "eval: output folder exists (pass --overwrite to replace it)" in err
    (tmp_path / "file").write_text("x")
    code, err = _run(["--out", str(tmp_path / "file"), "--synthetic-n", "2", "--overwrite"], capsys)
    assert code == 2 and "file: is a file, not a folder" in err


def test_nothing_to_evaluate_is_an_error(tmp_path, capsys, no_work):
    for n in ("0", "-3"):
        code, err = _run(["--out", str(tmp_path / "eval"), "--synthetic-n", n], capsys)
        assert code == 2 and f"--synthetic-n {n}: expected at least 1 synthetic image (0 only with --davis)" in err
    code, err = _run(["--out", str(tmp_path / "eval"), "--davis", str(tmp_path), "--davis-stride", "0"], capsys)
    assert code == 2 and "--davis-stride 0: expected at least 1" in err
    assert list(tmp_path.iterdir()) == []
