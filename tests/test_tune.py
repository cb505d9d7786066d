"""``fastv2v tune``: measures candidates on the user's clip, keeps the fastest that meets the
target, and writes a model file that ``fastv2v translate`` runs exactly as measured."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from conftest import synthetic_frame
from fastv2v.cli import main
from fastv2v.tune import Candidate, Target, front


def _psnr(a_folder, b_folder, frames):
    a = [np.asarray(Image.open(p).convert("RGB"), float) for p in sorted(a_folder.glob("*.png"))[:frames]]
    b = [np.asarray(Image.open(p).convert("RGB"), float) for p in sorted(b_folder.glob("*.png"))[:frames]]
    mse = np.mean([np.mean((x - y) ** 2) for x, y in zip(a, b)])
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


@pytest.fixture
def clip(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(10):
        Image.fromarray(synthetic_frame(i, (32, 64))).save(folder / f"{i:03d}.png")
    return folder


def test_tune_writes_a_pipeline_that_translate_reproduces(teacher, clip, tmp_path, capsys):
    out = tmp_path / "tune-out"
    code = main(["tune", "--model", str(teacher), "--input", str(clip), "--target", "psnr=20", "--frames", "0",
                 "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "chosen:" in capsys.readouterr().out
    report = json.loads((out / "tune.json").read_text())
    chosen = report["chosen"]
    assert chosen["psnr_vs_teacher"] is None or chosen["psnr_vs_teacher"] >= 20
    assert all(c["e2e_speedup"] <= chosen["e2e_speedup"] for c in report["candidates"]
               if c["psnr_vs_teacher"] is None or c["psnr_vs_teacher"] >= 20)  # fmt: skip
    assert {"interp@2", "repeat@4", "sparse"} <= {c["pipeline"] for c in report["candidates"]}
    assert (out / "tune.md").exists() and (out / "pareto.png").exists()
    # `--dtype auto` runs the file at the precision it was tuned at (bf16 where that is native)
    for name, extra in (("tuned", ["--dtype", "auto"]), ("teacher", ["--method", "teacher", "--dtype", "fp32"])):
        model = out / "pipeline.safetensors" if name == "tuned" else teacher
        assert main(["translate", str(clip), str(tmp_path / name), "--model", str(model), "--quiet", *extra]) == 0
    measured = _psnr(tmp_path / "tuned", tmp_path / "teacher", chosen["frames"])
    expected = math.inf if chosen["psnr_vs_teacher"] is None else chosen["psnr_vs_teacher"]
    assert measured == pytest.approx(expected, abs=0.1)  # a bf16 choice too: measured against the fp32 teacher


def test_unreachable_target_names_the_closest(teacher, clip, tmp_path, capsys):
    code = main(["tune", "--model", str(teacher), "--input", str(clip), "--target", "speedup=1000", "--frames", "6",
                 "--out", str(tmp_path / "t"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "no candidate pipeline reaches speedup=1000" in err and "the closest is" in err
    assert err.count("\n") == 1 and not (tmp_path / "t" / "pipeline.safetensors").exists()


@pytest.mark.parametrize("bad", ["psnr", "psnr=", "quality=3", "speedup=-1", "psnr=nan"])
def test_bad_target_is_one_sentence(bad):
    from fastv2v.errors import UserError

    with pytest.raises(UserError, match="--target takes psnr=DB or speedup=X"):
        Target.parse(bad)


def test_front_keeps_the_undominated():
    cs = [Candidate("m", n, None, {}) for n in "abc"]
    for c, (s, e) in zip(cs, [(4.0, 1.0), (2.0, 0.1), (3.0, 2.0)]):  # speed-up, squared error
        c.clips, c.frames, c.squared_error, c.teacher_seconds, c.seconds = 1, 1, e * 1000, s, 1.0
    assert [c.method for c in front(cs)] == ["a", "b"]  # c is slower than a and less faithful than a


def test_a_tiny_budget_stops_within_the_first_clip(teacher, clip, tmp_path, monkeypatch):
    import fastv2v.bench as bench
    from fastv2v.tune import tune

    calls = []
    real = bench.run_bench

    def counting(*args, **kwargs):
        calls.append([r[0] for r in kwargs["runs"]])
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "run_bench", counting)
    result = tune([teacher], [clip, clip], Target("psnr", 1), frames=6, budget_seconds=1e-3, progress=False,
                  dtypes=("fp32",))  # fmt: skip
    assert calls == [["repeat"]]  # the teacher and the first candidate, then the budget is checked
    assert result.clips == [str(clip)] and [c.label for c in result.candidates] == ["repeat@2"]
    assert any("budget was spent after 1 candidates" in s for s in result.skipped)
    assert any(s.startswith(f"{clip}: not measured") for s in result.skipped)


def test_bf16_candidates_where_the_device_runs_bf16_natively(teacher, clip, monkeypatch):
    import fastv2v.precision as precision
    from fastv2v.tune import tune

    monkeypatch.setattr(precision, "native", lambda dtype, device: True)  # measured, though emulated here
    result = tune([teacher], [clip], Target("psnr", 1), frames=4, dtypes=None, progress=False)
    labels = {c.label for c in result.candidates}
    assert {"repeat@2", "repeat@2 bf16", "teacher bf16"} <= labels
    bf16 = next(c for c in result.candidates if c.label == "teacher bf16")
    assert bf16.dtype == "bf16" and bf16.teacher_seconds > 0 and 20 < bf16.psnr < math.inf  # to the fp32 teacher


def test_tune_on_a_graph_backend_measures_graphs_and_skips_what_they_cannot_run(teacher, clip, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "t"
    code = main(["tune", "--model", str(teacher), "--input", str(clip), "--target", "psnr=1", "--frames", "6",
                 "--backend", "onnxruntime", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "--backend onnxruntime" in capsys.readouterr().out
    report = json.loads((out / "tune.json").read_text())
    assert report["backend"] == "onnxruntime"
    assert "sparse" not in {c["pipeline"] for c in report["candidates"]}
    assert any("sparse" in s for s in report["skipped"])
    assert all(c["dtype"] == "fp32" for c in report["candidates"])


@pytest.mark.parametrize("run", __import__("fastv2v.tune", fromlist=["x"]).TRAINING_FREE, ids=str)
def test_every_candidate_survives_the_pipeline_file(run, teacher, tmp_path):
    """What tune measured is what the written file rebuilds (settings and precision)."""
    from fastv2v.pipeline import Pipeline

    name, interval, settings = run if len(run) == 3 else (*run, {})
    extra = {"interval": interval} if interval else {}
    pipeline = Pipeline.from_file(teacher, name, **extra, **settings)
    pipeline.dtype = "bf16"
    again = Pipeline.from_file(pipeline.save(tmp_path / "p.safetensors"))
    assert (again.name, again.settings, again.dtype) == (name, pipeline.settings, "bf16")
