"""Bulk generation: batch size does not change images, JSONL jobs skip bad lines by number, a rerun finishes a job
(also after SIGKILL) and refuses to keep a PNG made otherwise, and memory does not grow with the job."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from latentdiff.cli import main
from latentdiff.pipelines.images import read_params

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow cross", "a purple circle",
           "an orange square", "a white triangle", "a black cross"]


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=int)


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.mark.slow  # ~15 s: one job at three batch sizes
def test_batch_size_does_not_change_images(tiny_models, prompts, tmp_path, capsys):
    model = str(tiny_models[("epsilon", 8)])
    for size in (1, 3, 8):
        code, out, err = run(capsys, "generate", "--from-file", str(prompts), "--model", model, "--steps", "4",
                             "--batch-size", str(size), "-o", str(tmp_path / f"b{size}") + "/", "-q")
        assert code == 0, err
    for i in range(len(PROMPTS)):
        one, three, eight = (pixels(tmp_path / f"b{s}" / f"image-{i:03d}.png") for s in (1, 3, 8))
        assert np.abs(one - three).max() <= 1 and np.abs(one - eight).max() <= 1, i  # CPU kernels round per batch
        assert read_params(tmp_path / "b3" / f"image-{i:03d}.png")["seed"] == i
    assert (tmp_path / "b3" / "image-grid.png").is_file()


def test_jsonl_job_runs_good_lines_and_names_bad_ones(tiny_models, tmp_path, capsys):
    job = tmp_path / "job.jsonl"
    job.write_text("\n".join([
        json.dumps({"prompt": "a red circle", "seed": 11, "output": "red"}),
        "{not json",
        json.dumps({"prompt": "a blue square", "steps": 3, "num_images": 2, "output": "blue"}),
        json.dumps({"prompt": "a cross", "sampler": "heun"}),
        json.dumps({"text": "no prompt"}),
        json.dumps({"prompt": "a green triangle", "guidance": 1}),
    ]) + "\n")
    code, out, err = run(capsys, "generate", "--from-file", str(job), "--model", str(tiny_models[("epsilon", 8)]),
                         "--steps", "4", "--seed", "100", "-o", str(tmp_path / "out") + "/", "-q")
    assert code == 3, err
    assert "line 2: not valid JSON" in err and "line 4: sampler='heun' is not supported" in err
    assert "line 5: unknown key(s) text" in err
    made = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert made == ["blue-000.png", "blue-001.png", "image-003.png", "red.png"]  # no grid: the job names its files
    assert read_params(tmp_path / "out" / "red.png")["seed"] == 11
    blue = [read_params(tmp_path / "out" / f"blue-00{j}.png") for j in (0, 1)]
    assert [b["seed"] for b in blue] == [101, 102] and blue[0]["steps"] == 3  # job seed + image index
    assert read_params(tmp_path / "out" / "image-003.png")["guidance"] == 1.0


def test_rerun_finishes_the_job_and_refuses_other_parameters(tiny_models, prompts, tmp_path, capsys):
    model, out = str(tiny_models[("epsilon", 8)]), str(tmp_path / "job") + "/"
    args = ["generate", "--from-file", str(prompts), "--model", model, "--steps", "3", "-o", out, "-q"]
    assert run(capsys, *args)[0] == 0
    before = pixels(tmp_path / "job" / "image-005.png")
    (tmp_path / "job" / "image-005.png").unlink()
    code, stdout, err = run(capsys, *args)
    assert code == 0 and stdout.split()[0] == str(tmp_path / "job" / "image-005.png")
    assert "7 of 8 images already made" in err and np.array_equal(pixels(tmp_path / "job" / "image-005.png"), before)
    code, stdout, err = run(capsys, *args[:-3], "--seed", "9", "-o", out, "-q")
    assert code == 2 and "image-000.png' exists and was made with other parameters" in err
    assert len(err.strip().splitlines()) == 1
    assert run(capsys, *args[:-3], "--seed", "9", "-o", out, "-q", "--overwrite")[0] == 0
    assert read_params(tmp_path / "job" / "image-000.png")["seed"] == 9


def _cli(argv, env=None):
    code = ("import resource, sys; from latentdiff.cli import main; code = main(sys.argv[1:]); "
            "print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)")
    return [sys.executable, "-c", code, *argv]


@pytest.mark.slow  # ~50 s: processes killed mid-job and rerun
def test_a_killed_job_rerun_gives_the_uninterrupted_set(tiny_models, prompts, tmp_path):
    model = str(tiny_models[("epsilon", 8)])
    base = ["generate", "--from-file", str(prompts), "--model", model, "--steps", "6", "--batch-size", "1", "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # both runs in the same kind of process: the same float rounding
    subprocess.run(_cli(base + ["-o", str(tmp_path / "straight") + "/"]), check=True, capture_output=True, env=env)
    job = subprocess.Popen(_cli(base + ["-o", str(tmp_path / "killed") + "/"]), stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, env=env)
    first = job.stdout.readline()  # the first PNG is written: kill it mid-job
    assert first.strip().endswith(b"image-000.png")
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    done = sorted(p.name for p in (tmp_path / "killed").glob("*.png"))
    assert 1 <= len(done) < len(PROMPTS)
    subprocess.run(_cli(base + ["-o", str(tmp_path / "killed") + "/"]), check=True, capture_output=True, env=env)
    names = sorted(p.name for p in (tmp_path / "straight").iterdir())
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == names  # no temporary files left
    for name in names:
        assert np.array_equal(pixels(tmp_path / "straight" / name), pixels(tmp_path / "killed" / name)), name


@pytest.mark.slow  # 30 s: two fresh processes and 72 images; run with `make test-slow`
def test_memory_does_not_grow_with_the_job(tiny_models, tmp_path):
    model = str(tiny_models[("epsilon", 8)])
    peaks = {}
    for count in (8, 64):
        job = tmp_path / f"{count}.txt"
        job.write_text("\n".join(PROMPTS * (count // len(PROMPTS))) + "\n")
        done = subprocess.run(_cli(["generate", "--from-file", str(job), "--model", model, "--steps", "2",
                                    "--batch-size", "4", "-o", str(tmp_path / str(count)) + "/", "-q"]),
                              check=True, capture_output=True, text=True)
        peaks[count] = int(done.stderr.split("maxrss")[-1].split()[0])
        assert len(list((tmp_path / str(count)).glob("image-*.png"))) == count + 1  # and a grid
    assert peaks[64] <= 1.1 * peaks[8], peaks


@pytest.mark.slow  # 40 s: three fresh processes; run with `make test-slow`
def test_two_processes_make_the_single_process_files(tiny_models, prompts, tmp_path):
    """`accelerate launch` with 2 CPU processes (torchrun + gloo) splits the job; the files equal a 1-process run's."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    job = ["generate", "--from-file", str(prompts), "--model", str(tiny_models[("epsilon", 8)]), "--steps", "3",
           "--batch-size", "2", "-q"]
    subprocess.run(_cli(job + ["-o", str(tmp_path / "one") + "/"]), check=True, capture_output=True, env=env)
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "latentdiff.cli"]
    done = subprocess.run(launch + job + ["-o", str(tmp_path / "two") + "/"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == names and len(names) == len(PROMPTS) + 1
    for name in names:
        assert np.array_equal(pixels(tmp_path / "one" / name), pixels(tmp_path / "two" / name)), name
    assert sorted(done.stdout.split()) == sorted(str(tmp_path / "two" / n) for n in names)  # each image once
