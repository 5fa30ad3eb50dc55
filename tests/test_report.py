"""The summary report: pure helpers, latency timing, and the table of a real (tiny) MiniDisc run."""

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

import run_minidisc
from tools import latency, report


def test_speedup():
    assert report.speedup(100.0, 25.0) == 4.0
    assert report.speedup(10.0, 20.0) == 0.5
    assert report.speedup(None, 5.0) is None and report.speedup(5.0, None) is None
    assert report.speedup(5.0, 0.0) is None


def test_format_table_rows_and_missing_values():
    rows = [
        {"name": "teacher", "sparsity": 0, "dev": 0.81234, "prunable_parameters": 10_637_568,
         "total_parameters": 22_861_826, "latency_ms": 120.04, "speedup": 1.0},
        {"name": "student 90S", "sparsity": 90, "dev": None, "prunable_parameters": 1_063_757,
         "total_parameters": None, "latency_ms": None, "speedup": None},
    ]
    lines = report.format_table(rows, "acc").splitlines()
    assert lines[0] == ("| model | sparsity | dev acc | prunable params | total params | latency ms/batch | "
                        "speedup | PyTorch padded ms/batch | ONNX Runtime ms/batch | ONNX vs PyTorch |")
    assert len(lines) == 2 + len(rows)
    assert lines[2] == "| teacher | 0% | 0.8123 | 10.64M | 22.86M | 120.0 | 1.00× | – | – | – |"
    assert lines[3] == "| student 90S | 90% | – | 1.06M | – | – | – | – | – | – |"
    rows[0]["onnx_agreement"] = {"relative_difference": 2.3e-6, "same_predictions": 8, "predictions": 8, "ok": True}
    rows[1]["onnx_agreement"] = {"relative_difference": 0.12, "same_predictions": 7, "predictions": 8, "ok": False}
    lines = report.format_table(rows, "acc").splitlines()
    assert lines[2].endswith("| 2.3e-06, 8/8 same |") and lines[3].endswith("| 1.2e-01, 7/8 same (differs) |")
    assert report.format_count(31_234) == "31.2K"


class Sleeper(torch.nn.Module):
    """Stands in for a model whose forward pass takes ``seconds`` per batch."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds, self.calls = seconds, 0

    def forward(self, **batch):
        self.calls += 1
        time.sleep(self.seconds)


def test_measure_latency_is_per_batch_median_after_warmup():
    slow, fast = Sleeper(0.02), Sleeper(0.0)
    batches = [{"input_ids": torch.zeros(1, 1)}] * 3
    ms = latency.measure_latency({"slow": slow, "fast": fast}, batches, warmup=1, repeats=3)
    assert slow.calls == fast.calls == (1 + 3) * len(batches)
    assert 20.0 <= ms["slow"] < 40.0  # per batch, not per pass of three batches
    assert ms["fast"] < 5.0
    with pytest.raises(ValueError):
        latency.measure_latency({"fast": fast}, batches, repeats=0)


def test_random_batch_shape_and_range():
    batch = latency.random_batch(vocab_size=50, batch_size=4, seq_length=7)
    assert batch["input_ids"].shape == (4, 7) and int(batch["input_ids"].min()) >= 1
    assert int(batch["input_ids"].max()) < 50 and bool(batch["attention_mask"].all())
    assert torch.equal(batch["input_ids"], latency.random_batch(50, 4, 7)["input_ids"])


@pytest.fixture(scope="module")
def minidisc_run(fine_grid_teacher, make_sst2_task, tmp_path_factory):
    """A finished two-iteration MiniDisc run of a tiny sparsified teacher (λ small, so an assistant is chosen)."""
    data = make_sst2_task(n_train=16, n_dev=12)
    teacher = fine_grid_teacher
    out = tmp_path_factory.mktemp("report") / "minidisc"
    run_minidisc.main(["--teacher_model_path", str(teacher), "--task_name", "sst2", "--data_dir", str(data),
                       "--output_dir", str(out), "--max_length", "16", "--per_device_train_batch_size", "8",
                       "--learning_rate", "1e-3", "--log_interval", "2", "--max_steps", "2", "--lam", "0.0",
                       "--trunc_sparsity", "80", "--target_sparsity", "90", "--do_train"])
    return {"out": out, "data": data, "teacher": teacher}


def test_read_minidisc_run_takes_scores_from_the_run_files(minidisc_run):
    out = minidisc_run["out"]
    results = json.loads((out / "results.json").read_text())
    run = report.read_minidisc_run(out)
    roles = [row["role"] for row in run["rows"]]
    assert roles[0] == "teacher" and roles[-1] == "student"
    assert roles.count("assistant") == len(results["assistants"]) == 1  # λ = 0: the best of 80S/85S
    assert run["rows"][0]["dev"] == results["teacher_dev"]["acc"]
    assert run["rows"][0]["path"] == str(minidisc_run["teacher"])
    assert run["rows"][-1]["dev"] == results["best_dev"]["acc"] and run["rows"][-1]["sparsity"] == 90
    for row in run["rows"][1:-1]:
        assert 80 <= row["sparsity"] < 90
        iteration = json.loads((out / "iter_1" / "results.json").read_text())
        assert row["dev"] == iteration["best_dev"]["acc"]


def report_command(minidisc_run, *extra) -> int:
    return report.main(["--minidisc_dir", str(minidisc_run["out"]), "--data_dir", str(minidisc_run["data"]),
                        "--task_name", "sst2", "--batch_size", "4", "--num_batches", "2", "--warmup", "0",
                        "--repeats", "1", "--threads", "1", *extra])


def test_report_command_writes_the_summary(minidisc_run, capsys):
    out = minidisc_run["out"]
    assert report_command(minidisc_run, "--no_onnx") == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["rows"]
    assert rows[0]["speedup"] == 1.0 and all(row["latency_ms"] > 0 for row in rows)
    # the student is physically smaller than the teacher, assistants in between
    prunable = [row["prunable_parameters"] for row in rows]
    assert prunable == sorted(prunable, reverse=True) and prunable[-1] < prunable[0]
    assert rows[-1]["total_parameters"] < rows[0]["total_parameters"]
    assert summary["schedule_picture"].endswith("schedule.png")
    text = (out / "summary.md").read_text()
    assert text in capsys.readouterr().out
    assert "| teacher | 0% |" in text and "student 90S" in text and "schedule.png" in text
    assert all(row["onnx_ms"] is None and row["padded_ms"] is None for row in rows)
    assert (out / "summary.png").stat().st_size > 10_000 and summary["tradeoff_picture"].endswith("summary.png")
    # the student's card now has its measured latency
    card = (Path(rows[-1]["path"]) / "README.md").read_text()
    assert "## Latency" in card and f"| PyTorch | {rows[-1]['latency_ms']:.1f} |" in card


@pytest.mark.slow
def test_report_exports_and_times_onnx(minidisc_run, tmp_path):
    pytest.importorskip("onnxruntime")
    teacher = shutil.copytree(minidisc_run["teacher"], tmp_path / "teacher")  # the shared one is read-only
    assert report_command(minidisc_run, "--teacher_dir", str(teacher)) == 0
    summary = json.loads((minidisc_run["out"] / "summary.json").read_text())
    for row in summary["rows"]:
        assert row["onnx_ms"] > 0 and row["onnx_max_difference"] < 1e-4
        assert (Path(row["path"]) / "onnx" / "model.onnx").is_file()
    assert "ONNX Runtime" in (Path(summary["rows"][-1]["path"]) / "README.md").read_text()


def test_padded_pytorch_does_the_exported_graphs_work():
    """The eager model skips padded tokens outside attention; the exported graph computes them. The report's
    padded PyTorch time runs every token, as the graph does, with the same values at the real tokens."""
    from tests.helpers import padded_batch, tiny_model
    from tools.export_onnx import PaddedPyTorch

    model = tiny_model("sparsebert_cls", 2, seed=1).eval()
    batch = padded_batch(torch.Generator().manual_seed(0), 4, 12, {1: 3, 2: 5, 3: 8})
    rows_seen = []
    hook = model.bert.layers[0].intermediate.register_forward_hook(
        lambda module, args, output: rows_seen.append(output.flatten(0, -2).shape[0]))
    with torch.inference_mode():
        eager, padded = model(**batch).logits, PaddedPyTorch(model)(**batch).logits
    hook.remove()
    assert rows_seen == [int(batch["attention_mask"].sum()), 4 * 12]  # real tokens only; every token
    torch.testing.assert_close(padded, eager, atol=1e-5, rtol=1e-5)
    assert report.padding_fraction([batch]) == pytest.approx(1 - int(batch["attention_mask"].sum()) / 48)


def test_report_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert report.main(["--minidisc_dir", str(tmp_path), "--no_latency"]) == 1
    assert "results.json is missing" in capsys.readouterr().err


def test_an_onnx_export_that_disagrees_is_reported_not_fatal(minidisc_run, monkeypatch, capsys):
    """The report summarises a finished run: an export whose logits differ shows in the table and is
    explained; it never fails the job. Both runtimes are timed with the same threads and spin policy."""

    exported = {}

    def fake_export(model, path, example):
        exported[str(path)] = model
        return path

    class FakeSession:
        """PyTorch's logits, 10% off for the student (an export that computes something else)."""

        def __init__(self, path, names, threads=None):
            self.model, self.threads = exported[str(path)], threads
            self.wrong = "minidisc" in str(path) and "iter_2" in str(path)

        def eval(self):
            return self

        def __call__(self, **batch):
            logits = self.model(**batch).logits
            return logits * torch.tensor([1.0, 1.25]) if self.wrong else logits.clone()

    monkeypatch.setattr(report, "export", fake_export)
    monkeypatch.setattr(report, "OnnxModel", FakeSession)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert report_command(minidisc_run) == 0
    summary = json.loads((minidisc_run["out"] / "summary.json").read_text())
    student = summary["rows"][-1]
    assert student["onnx_agreement"]["ok"] is False and student["onnx_agreement"]["relative_difference"] > 0.01
    assert all(row["onnx_agreement"]["ok"] for row in summary["rows"][:-1])
    assert all(row["onnx_agreement"]["predictions"] == 8 for row in summary["rows"])  # 2 dev batches of 4
    text = (minidisc_run["out"] / "summary.md").read_text()
    assert "same (differs) |" in text and f"The export of {student['name']} differs from PyTorch" in text
    assert "fp32 round-off between two correct runtimes" in text
    # ONNX Runtime runs the padded graph: PyTorch is also timed on that work, and the note says which is which
    assert all(row["padded_ms"] > 0 for row in summary["rows"])
    assert 0 < summary["latency"]["padding"] < 1 and f"{summary['latency']['padding']:.0%} of their token positions padding" in text
    assert "'PyTorch padded': the eager model with the padding kept and masked" in text
    assert "PyTorch, padding kept (the exported graph's work)" in (Path(student["path"]) / "README.md").read_text()
    setting = "PyTorch 1 and ONNX Runtime 1 intra-op threads, OMP_WAIT_POLICY PASSIVE and ONNX Runtime spinning off"
    assert summary["latency"]["timing_setup"] == {"threads": {"pytorch": 1, "onnxruntime": 1},
                                                  "omp_wait_policy": "PASSIVE", "allow_spinning": False}
    assert setting in text and setting in (Path(student["path"]) / "README.md").read_text()


def test_a_model_that_cannot_be_exported_is_listed_not_fatal(minidisc_run, monkeypatch):
    from tools import export_onnx

    def no_exporter(model, path, example):
        raise export_onnx.ExportError("onnxscript is not installed (torch's ONNX exporter needs it)")

    monkeypatch.setattr(report, "export", no_exporter)
    assert report_command(minidisc_run) == 0
    summary = json.loads((minidisc_run["out"] / "summary.json").read_text())
    assert all(row["onnx_ms"] is None and "onnxscript is not installed" in row["onnx_error"] for row in summary["rows"])
    text = (minidisc_run["out"] / "summary.md").read_text()
    assert f"{summary['rows'][-1]['name']} was not timed in ONNX Runtime: onnxscript is not installed" in text
