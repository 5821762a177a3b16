"""Annotating an archive: --shard K/N, --jobs N (worker processes), --resume after a failure,
and --summary DIR over the outputs of every shard. Real videos, real worker processes."""
from __future__ import annotations

import io
import json

import pytest

from _pipeline_media import write_clip
from pipeline.annotate import main as annotate
from pipeline.archive import JobBoard, Task, parse_shard, shard_indices, threads_per_job
from pipeline.cli_util import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from pipeline.errors import ConfigError


def test_shards_cover_the_list_once_and_are_deterministic():
    for count in (0, 1, 5, 12):
        for n in (1, 2, 3, 7):
            slices = [shard_indices(count, k, n) for k in range(n)]
            assert sorted(i for s in slices for i in s) == list(range(count))
            assert all(abs(len(a) - len(b)) <= 1 for a in slices for b in slices)    # balanced
    assert shard_indices(5, 1, 2) == [1, 3]
    assert parse_shard("0/4") == (0, 4) and parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/4", "1/0", "a/b", "1", "1/2/3"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)


def test_threads_per_job_never_oversubscribe():
    assert threads_per_job(1, cores=8) == 8
    assert threads_per_job(3, cores=8) == 2          # 3 x 2 <= 8
    assert threads_per_job(4, cores=2) == 1          # at least one each
    assert all(j * threads_per_job(j, cores=c) <= max(c, j) for j in range(1, 9) for c in range(1, 17))


def test_job_board_lines_and_time_left():
    tasks = [Task(index=i, spec=f"v{i}.mp4", name=f"v{i}", directory=None) for i in range(3)]
    stream = io.StringIO()
    board = JobBoard(tasks, jobs=2, stream=stream, log_interval=0.0)
    board.start(0, 0)
    board.start(1, 1)
    board.progress(0, 50, 100)
    board.progress(1, 20, 200)
    lines = board.lines()
    assert lines[0].startswith("[1] v0: 50/100 frames") and lines[1].startswith("[2] v1: 20/200 frames")
    assert lines[2].startswith("total: 0/3 inputs, 70 frames")
    assert "time left" in lines[2] and "--:--" not in lines[2]     # the unopened input counts as the mean
    board.end(0, ok=False)
    assert board.lines()[0] == "[1] idle" and "1 failed" in board.lines()[2]
    assert stream.getvalue().count("total:") >= 2


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Three clips (two with one polyp, one with none after frame 5) and an input that is not a video."""
    root = tmp_path_factory.mktemp("archive")
    inputs = []
    for i, visible in enumerate((None, 5, None)):
        path = root / f"case{i}.mp4"
        write_clip(path, n=20 + i, width=96, height=64, fps=10.0, visible_until=visible)
        inputs.append(str(path))
    bad = root / "broken.mp4"
    bad.write_bytes(b"not a video" * 50)
    bad.with_name("broken.gt.json").write_text("{}")
    inputs.insert(1, str(bad))
    return root, inputs


def _frames(directory):
    return [json.loads(line) for line in (directory / "frames.jsonl").read_text().splitlines()]


def test_shards_with_jobs_resume_and_summary(archive, capsys):
    root, inputs = archive
    common = ["--boxes", "auto", "--set", "track.min_hits=1"]
    reference = root / "one-process"
    assert annotate(inputs + ["--out", str(reference), "--quiet"] + common) == EXIT_FAILURE
    capsys.readouterr()

    out = root / "shards"
    # Shard 0/2 = inputs 0 and 2 (case0, case1), shard 1/2 = inputs 1 and 3 (broken, case2).
    assert annotate(inputs + ["--out", str(out), "--shard", "0/2", "--jobs", "2"] + common) == EXIT_OK
    err = capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["case0", "case1"]
    # One progress line per worker and a total with the time left (stderr is not a terminal here).
    assert "hagview-annotate: [1] " in err and "hagview-annotate: [2] " in err
    assert "hagview-annotate: total: 2/2 inputs, 41 frames" in err and "time left" in err
    assert annotate(inputs + ["--out", str(out), "--shard", "1/2", "--jobs", "2"] + common) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "error: " in err and "broken.mp4" in err and "total: 2/2 inputs, 1 failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["broken.failed.json", "case0", "case1", "case2"]
    failure = json.loads((out / "broken.failed.json").read_text())
    assert failure["input"].endswith("broken.mp4") and "broken.mp4" in failure["error"]

    # The worker processes computed what one process computes, frame by frame.
    for name in ("case0", "case1", "case2"):
        got, want = _frames(out / name), _frames(reference / name)
        assert [r["index"] for r in got] == [r["index"] for r in want]
        for a, b in zip(got, want):
            assert [(t["id"], t["box"]) for t in a["tracks"]] == [(t["id"], t["box"]) for t in b["tracks"]]
            for ta, tb in zip(a["tracks"], b["tracks"]):
                # Same models and inputs; engines with other thread counts may round differently.
                assert (ta["size_mm"] is None) == (tb["size_mm"] is None)
                if ta["size_mm"] is not None:
                    assert ta["size_mm"] == pytest.approx(tb["size_mm"], abs=1e-3)

    # Re-running the failed shard with --resume redoes only what is not complete.
    before = (out / "case2" / "run.json").stat().st_mtime_ns
    assert annotate(inputs + ["--out", str(out), "--shard", "1/2", "--resume", "--quiet"] + common) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.count("already done") == 1 and "case2.mp4: already done" in err and "broken.mp4" in err
    assert (out / "case2" / "run.json").stat().st_mtime_ns == before

    # The archive summary merges both shards' outputs and the failure.
    assert annotate(["--summary", str(out)]) == EXIT_OK
    summary = json.loads((out / "summary.json").read_text())
    polyps = {name: json.loads((out / name / "polyps.json").read_text())["polyps"] for name in ("case0", "case1", "case2")}
    assert [v["name"] for v in summary["videos"]] == ["case0", "case1", "case2"]
    assert [v["polyps"] for v in summary["videos"]] == [len(polyps[n]) for n in ("case0", "case1", "case2")]
    assert [v["frames"] for v in summary["videos"]] == [20, 21, 22]
    assert summary["totals"]["videos"] == 3 and summary["totals"]["failed"] == 1
    assert summary["totals"]["polyps"] == sum(len(p) for p in polyps.values())
    sized = [p["size_mm"] for ps in polyps.values() for p in ps if p["size_mm"] is not None]
    assert sum(summary["per_class"].values()) == len(sized) == summary["totals"]["sized"]
    assert sum(b["polyps"] for b in summary["size_histogram"]) == len(sized)
    assert [f["name"] for f in summary["failures"]] == ["broken"]
    page = (out / "summary.html").read_text()
    assert "case1/report.html" in page and "broken.mp4" in page


def test_workers_keep_their_models_and_a_dead_worker_fails_its_input_alone(archive, tmp_path):
    """Two workers for five inputs: each loads the models once and takes input after input; the
    one that dies (handed `dies.mp4`) fails that input only, and a fresh worker does the rest."""
    import _dying_worker
    from pipeline.annotate import AnnotateOptions, plan_tasks
    from pipeline.archive import run_jobs

    root, inputs = archive
    clips = [inputs[0], inputs[2], inputs[3]]
    dies = root / "dies.mp4"
    dies.write_bytes((root / "case0.mp4").read_bytes())
    tasks = plan_tasks([clips[0], str(dies), clips[1], clips[2], clips[0]], tmp_path / "out", ["auto"] * 5)
    settings = {"config": None, "set": ["track.min_hits=1"], "sizer": None, "detector": None,
                "backend": "onnxruntime", "depth": None, "options": AnnotateOptions(quiet=True), "threads": 1}
    done, failed = [], []
    started = _count_processes()
    workers = []
    run_jobs(tasks, settings, 2, on_done=lambda t, v: (done.append((t.name, v["frames"])), workers.append(v["worker"])),
             on_failed=lambda t, m: failed.append((t.name, m)), quiet=True, worker=_dying_worker.worker)
    assert sorted(done) == sorted([("case0", 20), ("case1", 21), ("case2", 22), (tasks[4].name, 20)])
    assert len(set(workers)) <= 2 < len(workers)  # the survivor and the fresh worker: processes did several inputs
    assert failed == [("dies", f"{dies}: the worker process exited with code 3")]
    assert all((task.directory / "run.json").is_file() for task in tasks if task.name != "dies")
    assert _count_processes() == started          # every worker was told to stop and has exited


def _count_processes() -> int:
    import multiprocessing
    return len(multiprocessing.active_children())


def test_archive_usage_errors(tmp_path, capsys):
    clip = tmp_path / "c.mp4"
    write_clip(clip, n=4)
    for argv, message in ((["--summary", str(tmp_path), str(clip)], "--summary DIR takes no inputs"),
                          ([str(clip), "--out", str(tmp_path / "o"), "--shard", "2/2"], "--shard 2/2"),
                          ([str(clip), "--out", str(tmp_path / "o"), "--jobs", "0"], "--jobs must be >= 1"),
                          ([str(clip)], "give one or more INPUTs and --out DIR"),
                          (["--summary", str(tmp_path / "none")], "no such directory")):
        assert annotate(argv) == EXIT_USAGE
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
