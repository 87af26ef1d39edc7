"""``adapt.batch`` on tiny clips cut from the bundled demo: folder and list inputs, resume, failures, torchrun."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from adapt.batch import main as batch_main
from adapt.batch_inputs import assign_names, parse_list_line
from adapt.inputs import DEMO_MASK, DEMO_VIDEO
from birdmesh.errors import UserError
from birdmesh.video import read_frames, write_video

REPO = Path(__file__).resolve().parents[2]
# test_run.py's FAST settings, without the overlay video (not what is tested here)
FAST = ["correspondence.method=pixels", "propagation.use_bf16=false", "input.max_side=160", "optim.iterations=2",
        "optim.refine_iterations=3", "optim.batch_size=3", "optim.render_size=32", "parts.num_parts=4",
        "export.overlay=false"]


@pytest.fixture(scope="module")
def frames():
    return read_frames(DEMO_VIDEO, max_frames=3)  # (3, H, W, 3) uint8


def _sets(predictor_checkpoint):
    return [arg for item in FAST + [f"predictor.checkpoint={predictor_checkpoint}"] for arg in ("--set", item)]


def _batch(args, predictor_checkpoint) -> int:
    """adapt.batch in this process (one thread); its exit code."""
    try:
        batch_main([*args, "--threads", "1", *_sets(predictor_checkpoint)])
    except SystemExit as exit_:
        return exit_.code
    return 0


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def test_folder_runs_every_video_then_resumes(tmp_path, frames, predictor_checkpoint):
    clips = tmp_path / "clips"
    clips.mkdir()
    write_video(clips / "wren.mp4", frames[:3], fps=12)
    write_video(clips / "Robin.MOV", frames[:2], fps=12)
    (clips / "gull").mkdir()  # a folder of frames is a video too
    for t in range(2):
        Image.fromarray(frames[t]).save(clips / "gull" / f"{t:05d}.jpg")
    (clips / "notes.txt").write_text("not a video")
    out = tmp_path / "out"
    assert _batch([str(clips), "--out", str(out)], predictor_checkpoint) == 0
    summary = _summary(out)
    assert [(v["name"], v["status"], v["frames"]) for v in summary["videos"]] == [
        ("Robin", "ok", 2), ("gull", "ok", 2), ("wren", "ok", 3)]
    assert summary["counts"] == {"ok": 3, "skipped": 0, "failed": 0}
    assert set(summary["videos"][0]["seconds"]) >= {"read", "propagate", "adapt", "refine", "export"}
    assert len(list((out / "wren" / "meshes").glob("*.obj"))) == 3
    csv_lines = (out / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("name,input,status,frames,seconds_read,") and csv_lines[0].endswith(",error")
    assert [line.split(",")[0] for line in csv_lines[1:]] == ["Robin", "gull", "wren"]
    report = (out / "wren" / "report.json").stat().st_mtime_ns
    assert _batch([str(clips), "--out", str(out)], predictor_checkpoint) == 0
    summary = _summary(out)
    assert [(v["name"], v["status"], v["frames"]) for v in summary["videos"]] == [
        ("Robin", "skipped", 2), ("gull", "skipped", 2), ("wren", "skipped", 3)]
    assert (out / "wren" / "report.json").stat().st_mtime_ns == report  # not redone
    assert not list(tmp_path.rglob("*.tmp*"))


def test_list_with_a_bad_entry_records_it_and_goes_on(tmp_path, frames, predictor_checkpoint, capsys):
    (tmp_path / "clips").mkdir()
    write_video(tmp_path / "clips" / "a.mp4", frames[:2], fps=12)
    (tmp_path / "clips" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x13" * 500)
    write_video(tmp_path / "b.mp4", frames[:2], fps=12)
    listing = tmp_path / "videos.txt"
    listing.write_text(f"# relative paths start at this file's folder\n\nclips/a.mp4 --mask {DEMO_MASK}\n"
                       f"clips/broken.mp4   # unreadable\n{tmp_path / 'b.mp4'} --box=-5,80,290,220\n")
    out = tmp_path / "out"
    assert _batch([str(listing), "--out", str(out)], predictor_checkpoint) == 1
    videos = {v["name"]: v for v in _summary(out)["videos"]}
    assert [v["status"] for v in videos.values()] == ["ok", "ok", "failed"]
    assert "broken.mp4" in videos["broken"]["error"] and "\n" not in videos["broken"]["error"]
    assert videos["broken"]["frames"] is None and not (out / "broken").exists()
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: 1 of 3 videos failed")


def test_bad_batch_input_is_one_line_error_before_any_work(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.txt").write_text("a.mp4\nb.mp4 --mask\n")
    (tmp_path / "quote.txt").write_text('"a.mp4\n')
    cases = [(tmp_path / "missing.txt", "no such list file"), (tmp_path / "empty", "no videos"),
             (tmp_path / "bad.txt", "bad.txt:2: --mask needs a value"), (tmp_path / "quote.txt", "quote.txt:1:")]
    for source, expected in cases:
        with pytest.raises(SystemExit) as info:
            batch_main([str(source), "--out", str(tmp_path / "out")])
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert info.value.code == 2 and last.startswith("error: ") and expected in last, (source, last)
    assert not (tmp_path / "out").exists()


def test_list_lines_and_name_clashes(tmp_path):
    base = tmp_path
    assert parse_list_line("  # only a comment", base, "l:1") is None
    video, mask, box = parse_list_line('"my clip.mp4" --mask=m.png  # note', base, "l:2")
    assert (video, mask, box) == (tmp_path / "my clip.mp4", tmp_path / "m.png", None)
    assert parse_list_line("/x/c#1.mp4 --box 1,2,3,4", base, "l:3") == (Path("/x/c#1.mp4"), None, "1,2,3,4")
    for line, expected in [("a.mp4 --mask m --box 1,2,3,4", "one of --mask and --box"),
                           ("a.mp4 --fps 3", "unexpected '--fps'"), ("a.mp4 --box 3,2,1,4", "empty box")]:
        with pytest.raises(UserError, match=expected):
            parse_list_line(line, base, "l:4")
    entries = [(Path(p), None, None) for p in ("/b/bird.mp4", "/a/bird-2.mp4", "/a/bird.mov", "/a/bird.mp4")]
    names = {item.name: str(item.video) for item in assign_names(entries)}
    assert names == {"bird": "/a/bird.mov", "bird-3": "/a/bird.mp4", "bird-4": "/b/bird.mp4",
                     "bird-2": "/a/bird-2.mp4"}
    assert [i.name for i in assign_names(entries[::-1])] == sorted(names)  # any order: the same names


def _timed(command, env):
    tic = time.time()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return time.time() - tic


@pytest.mark.slow  # ~55 s on 2 busy cores: three interpreters start (torchrun + 2 ranks) besides one plain run
def test_torchrun_two_processes_give_the_same_summary(tmp_path, frames, predictor_checkpoint):
    clips = tmp_path / "clips"
    clips.mkdir()
    for name, count in [("a", 2), ("b", 3), ("c", 2), ("d", 2)]:
        write_video(clips / f"{name}.mp4", frames[:count], fps=12)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"clips/{name}.mp4 --mask {DEMO_MASK}\n" for name in "dcba"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["-m", "adapt.batch", str(listing), *_sets(predictor_checkpoint)]
    one = _timed([sys.executable, *common, "--out", str(tmp_path / "one"), "--threads", "1"], env)
    two = _timed([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                  *common, "--out", str(tmp_path / "two")], env)
    print(f"4 tiny clips: 1 process {one:.1f} s, torchrun 2 processes {two:.1f} s")
    untimed = [[{k: v for k, v in row.items() if k != "seconds"} for row in _summary(tmp_path / d)["videos"]]
               for d in ("one", "two")]
    assert untimed[0] == untimed[1] and [row["name"] for row in untimed[0]] == ["a", "b", "c", "d"]
    assert all(row["status"] == "ok" for row in untimed[1])
    for name in "abcd":  # the same meshes, whichever process made them
        obj = f"{name}/meshes/00001.obj"
        assert (tmp_path / "one" / obj).read_bytes() == (tmp_path / "two" / obj).read_bytes()
