"""Two processes (torchrun, gloo, CPU) against one process on the same data and global batch."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO_ROOT, read_jsonl, same_weights

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script: str, args: list[str], nproc: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    if nproc == 1:
        cmd = [sys.executable, str(REPO_ROOT / script), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), str(REPO_ROOT / script), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def setup(make_sst2_task, make_teacher, tmp_path_factory):
    data = make_sst2_task(n_train=32, n_dev=11)
    teacher = make_teacher(levels=(0, 50, 60, 90), **NO_DROPOUT)
    return tmp_path_factory.mktemp("ddp"), data, teacher


def test_finetuning_two_processes_equal_one(setup):
    root, data, teacher = setup
    base = ["--model_name_or_path", str(teacher), "--task_name", "sst2", "--data_dir", str(data), "--max_length",
            "16", "--learning_rate", "1e-3", "--log_interval", "2", "--max_steps", "6", "--per_device_eval_batch_size",
            "4", "--do_train", "--do_infer", "--use_cpu"]
    launch("run_finetuning.py", base + ["--output_dir", str(root / "one"), "--per_device_train_batch_size", "8"], 1)
    launch("run_finetuning.py", base + ["--output_dir", str(root / "two"), "--per_device_train_batch_size", "4"], 2)
    one, two = read_jsonl(root / "one" / "metrics.jsonl"), read_jsonl(root / "two" / "metrics.jsonl")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [2, 4, 6]
    for a, b in zip(one, two, strict=True):
        assert a["metrics"] == b["metrics"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
    assert same_weights(root / "one" / "best", root / "two" / "best", atol=1e-5)
    # the dev set (11 examples, odd on purpose) is scored once per example: predictions file has every test row
    assert (root / "one" / "SST-2.tsv").read_text() == (root / "two" / "SST-2.tsv").read_text()
    assert json.loads((root / "two" / "args.json").read_text())["world_size"] == 2


def test_distributed_evaluation_counts_each_example_once(setup, monkeypatch):
    from data.tasks import get_task
    from utils.engine.evaluation import collect_outputs

    class FakeRun:
        rank, world_size, distributed, device, amp_dtype, is_main, fsdp = 0, 1, False, torch.device("cpu"), None, False, False

    class Dataset:
        task = get_task("sst2")
        lengths = [3, 1, 2, 5, 4]

        def __len__(self):
            return 5

        def __getitem__(self, i):
            return {"input_ids": [1] * self.lengths[i], "token_type_ids": [0] * self.lengths[i], "feature_index": i}

        def collate_fn(self, items):
            from data.pipelines import collate
            return collate(items, 0)

    class Model(torch.nn.Module):
        def forward(self, input_ids, attention_mask, token_type_ids):
            return type("Out", (), {"logits": attention_mask.sum(1, keepdim=True).float()})

    shards = []
    for rank in range(2):
        run = FakeRun()
        run.rank, run.world_size = rank, 2
        shards.append(collect_outputs(Model(), Dataset(), 2, run))
    merged = {**shards[0], **shards[1]}
    assert sorted(merged) == [0, 1, 2, 3, 4] and not set(shards[0]) & set(shards[1])
    assert [int(merged[i].item()) for i in range(5)] == Dataset.lengths


# Each 2-process test costs about 30 s of CI's 10 minutes: the T5 variant (same loop, same weighting) runs
# outside CI (pytest -m slow).
@pytest.mark.parametrize("model_type", ["sparsebert_cls", pytest.param("sparseenct5_cls", marks=pytest.mark.slow),
                                        "sparsedecoder_cls"])
def test_minidisc_two_processes_equal_one(model_type, make_sst2_task, make_teacher, tmp_path):
    # sentences of different lengths: each process's token mean is weighted by its share of the
    # global batch's tokens, so the gradient is that of one mean over all tokens
    data = make_sst2_task(n_train=16, n_dev=11, seed=4)
    lengths = {len(line.split("\t")[0].split()) for line in (data / "sst2" / "train.tsv").read_text().splitlines()[1:]}
    assert len(lengths) > 3
    no_dropout = {"sparsebert_cls": NO_DROPOUT, "sparseenct5_cls": {"dropout_rate": 0.0}}.get(model_type, {})
    teacher = make_teacher(levels=(0, 50, 60, 90), model_type=model_type, **no_dropout)
    base = ["--teacher_model_path", str(teacher), "--task_name", "sst2", "--data_dir", str(data),
            "--max_length", "16", "--learning_rate", "1e-3", "--log_interval", "2", "--max_steps", "2", "--lam", "0",
            "--target_iteration", "1", "--do_train", "--use_cpu"]
    launch("run_minidisc.py", base + ["--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", "8"], 1)
    launch("run_minidisc.py", base + ["--output_dir", str(tmp_path / "two"), "--per_device_train_batch_size", "4"], 2)
    one = read_jsonl(tmp_path / "one" / "iter_1" / "metrics.jsonl")
    two = read_jsonl(tmp_path / "two" / "iter_1" / "metrics.jsonl")
    assert one[-1]["sparsities"] == two[-1]["sparsities"]
    assert one[-1]["train_loss"] == pytest.approx(two[-1]["train_loss"], abs=1e-5)
    assert same_weights(tmp_path / "one" / "iter_1" / "best", tmp_path / "two" / "iter_1" / "best", atol=1e-5)


def test_language_model_minidisc_two_processes_equal_one(make_teacher, tmp_path):
    """The chunked KL's per-process means weighted by their shares of the global batch's tokens, and the
    perplexity's sums gathered: two processes train and score a language model as one."""
    from tests.test_lm import lm_corpus

    data = lm_corpus(tmp_path / "data", documents=40)
    teacher = make_teacher(levels=(0, 50, 60, 90), model_type="sparsedecoder_lm")
    base = ["--teacher_model_path", str(teacher), "--task_name", "lm", "--data_dir", str(data),
            "--max_length", "16", "--learning_rate", "1e-3", "--log_interval", "2", "--max_steps", "2", "--lam", "0",
            "--target_iteration", "1", "--do_train", "--use_cpu", "--max_train_samples", "16",
            "--objective", "lm_kd_cos", "--lm_loss_weight", "0.5"]
    launch("run_minidisc.py", base + ["--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", "8"], 1)
    launch("run_minidisc.py", base + ["--output_dir", str(tmp_path / "two"), "--per_device_train_batch_size", "4"], 2)
    one = read_jsonl(tmp_path / "one" / "iter_1" / "metrics.jsonl")
    two = read_jsonl(tmp_path / "two" / "iter_1" / "metrics.jsonl")
    for s, metrics in one[-1]["sparsities"].items():
        assert two[-1]["sparsities"][s] == pytest.approx(metrics, rel=1e-5)
    assert one[-1]["train_loss"] == pytest.approx(two[-1]["train_loss"], abs=1e-5)
    assert same_weights(tmp_path / "one" / "iter_1" / "best", tmp_path / "two" / "iter_1" / "best", atol=1e-5)


def test_token_task_fine_tuning_two_processes_equal_one(make_conll_task, make_teacher, tmp_path):
    # CoNLL sentences of 2-9 words: the token cross-entropy is a mean over every process's scored words
    data = make_conll_task(n_train=16, n_dev=7)
    teacher = make_teacher(model_type="sparsebert_ner", num_labels=9, **NO_DROPOUT)
    base = ["--model_type", "sparsebert_ner", "--data_type", "bert_ner", "--model_name_or_path", str(teacher),
            "--task_name", "conll", "--data_dir", str(data), "--max_length", "32", "--learning_rate", "1e-3",
            "--log_interval", "2", "--max_steps", "4", "--do_train", "--use_cpu"]
    launch("run_finetuning.py", base + ["--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", "8"], 1)
    launch("run_finetuning.py", base + ["--output_dir", str(tmp_path / "two"), "--per_device_train_batch_size", "4"], 2)
    one, two = read_jsonl(tmp_path / "one" / "metrics.jsonl"), read_jsonl(tmp_path / "two" / "metrics.jsonl")
    for a, b in zip(one, two, strict=True):
        assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-6)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
    assert same_weights(tmp_path / "one" / "best", tmp_path / "two" / "best", atol=1e-5)


@pytest.mark.parametrize("model_type", ["sparsebert_cls", "sparsedecoder_cls"])
def test_fsdp_fine_tuning_two_processes_equal_one(model_type, make_sst2_task, make_teacher, tmp_path):
    """FSDP2 on gloo (every layer sharded): losses, dev metrics and the saved best model of two processes
    equal one process's with the same global batch; sentences of different lengths."""
    data = make_sst2_task(n_train=32, n_dev=11, seed=4)
    teacher = make_teacher(model_type=model_type, **({"sparsebert_cls": NO_DROPOUT}.get(model_type, {})))
    base = ["--model_name_or_path", str(teacher), "--task_name", "sst2", "--data_dir", str(data), "--max_length",
            "16", "--learning_rate", "1e-3", "--log_interval", "2", "--max_steps", "4", "--per_device_eval_batch_size",
            "4", "--do_train", "--use_cpu"]
    launch("run_finetuning.py", base + ["--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", "8"], 1)
    # the decoder's sharded run also recomputes its layers in backward (gradient checkpointing inside FSDP2 units)
    extra = ["--gradient_checkpointing"] if model_type == "sparsedecoder_cls" else []
    launch("run_finetuning.py", base + ["--output_dir", str(tmp_path / "two"), "--per_device_train_batch_size", "4",
                                        "--fsdp", *extra], 2)
    one, two = read_jsonl(tmp_path / "one" / "metrics.jsonl"), read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [2, 4]
    for a, b in zip(one, two, strict=True):
        assert a["metrics"] == b["metrics"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
    assert same_weights(tmp_path / "one" / "best", tmp_path / "two" / "best", atol=1e-5)
    assert not (tmp_path / "two" / "checkpoint").exists()
    assert "sharded with FSDP2 over 2 processes" in (tmp_path / "two" / "log.txt").read_text()


@pytest.mark.parametrize("model_type", ["sparsebert_cls", "sparsedecoder_cls"])
def test_fsdp_minidisc_two_processes_equal_one(model_type, make_sst2_task, make_teacher, tmp_path):
    """A MiniDisc iteration (sandwich of four widths, teacher and student sharded), with its exports."""
    data = make_sst2_task(n_train=16, n_dev=11, seed=4)
    teacher = make_teacher(levels=(0, 50, 60, 90), model_type=model_type,
                           **({"sparsebert_cls": NO_DROPOUT}.get(model_type, {})))
    base = ["--teacher_model_path", str(teacher), "--task_name", "sst2", "--data_dir", str(data),
            "--max_length", "16", "--learning_rate", "1e-3", "--log_interval", "2", "--max_steps", "2", "--lam", "0",
            "--target_iteration", "1", "--export_all", "--do_train", "--use_cpu"]
    launch("run_minidisc.py", base + ["--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", "8"], 1)
    launch_recording_moves(tmp_path / "moves", "run_minidisc", base + [
        "--output_dir", str(tmp_path / "two"), "--per_device_train_batch_size", "4", "--fsdp"])
    one = read_jsonl(tmp_path / "one" / "iter_1" / "metrics.jsonl")
    two = read_jsonl(tmp_path / "two" / "iter_1" / "metrics.jsonl")
    assert one[-1]["sparsities"] == two[-1]["sparsities"]
    assert one[-1]["train_loss"] == pytest.approx(two[-1]["train_loss"], abs=1e-5)
    assert same_weights(tmp_path / "one" / "iter_1" / "best", tmp_path / "two" / "iter_1" / "best", atol=1e-5)
    log = (tmp_path / "two" / "log.txt").read_text()
    assert log.count("sharded with FSDP2 over 2 processes") >= 2  # the student and the teacher
    # the teacher for its dev score, the teacher and the student of the iteration: shards only, on each process
    assert_only_shards_reach_the_device(tmp_path / "moves", models=3)
    for export in (tmp_path / "one" / "iter_1" / "export").iterdir():
        assert same_weights(export, tmp_path / "two" / "iter_1" / "export" / export.name, atol=1e-5)


def test_fsdp_sandwich_gathers_and_reduces_once_per_step():
    """Collectives of one FSDP2 sandwich step (tiny BERT, 4 layer units and the root, 2 processes): the same
    number with four widths as with two."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(REPO_ROOT / "tests" / "distributed" / "fsdp_collectives.py")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    # a sandwich gathers every unit once (4 layers and the root) and reduces once, for 2 widths as for 4
    assert counts["2"] == counts["4"] == {"all_gather": 5, "reduce_scatter": 5}
    # a single pass reshards after forward, as FSDP2 does by default, and gathers again in backward
    assert counts["1"]["reduce_scatter"] == 5 and counts["1"]["all_gather"] > 5


def launch_recording_moves(out, script: str, args: list[str]) -> None:
    """``script`` (a module name) on 2 processes with what each moves to its device recorded in ``out``
    (``tests/distributed/device_moves.py``)."""
    launch("tests/distributed/device_moves.py", [str(out), script, *args], 2)


def assert_only_shards_reach_the_device(out, models: int) -> None:
    """Every process sharded ``models`` models, kept about half of each (2 processes), and never moved a whole
    parameter to its device (a model loaded on the CPU and moved there whole before sharding would)."""
    for rank in (0, 1):
        record = json.loads((out / f"rank{rank}.json").read_text())
        whole = [move for move in record["moves"] if move["whole_bytes"]]
        assert not whole, f"rank {rank} moved whole parameters to its device: {whole}"
        assert len(record["sharded"]) == models, record["sharded"]
        for model in record["sharded"]:
            assert 0.4 * model["full_bytes"] < model["local_bytes"] < 0.6 * model["full_bytes"], model


def test_fsdp_moves_only_shards_to_the_device(make_sst2_task, make_teacher, tmp_path):
    """Under --fsdp the teacher and the student are sharded where they were loaded (the CPU) and each process
    moves only its own shards to the training device, as does the model a finished run scores (--do_infer):
    no process ever holds a whole model there (for an 8 B model in fp32, 28 GiB on every GPU)."""
    data = make_sst2_task(n_train=16, n_dev=11, seed=4)
    teacher = make_teacher(levels=(0, 50, 60, 90), model_type="sparsedecoder_cls")
    args = ["--teacher_model_path", str(teacher), "--task_name", "sst2", "--data_dir", str(data), "--max_length",
            "16", "--layer_or_sparsity", "50S", "--max_steps", "2", "--log_interval", "2",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--do_train", "--do_infer",
            "--use_cpu", "--fsdp", "--output_dir", str(tmp_path / "run")]
    launch_recording_moves(tmp_path / "moves", "run_distillation", args)
    assert_only_shards_reach_the_device(tmp_path / "moves", models=3)  # teacher, student, the model scored
    assert (tmp_path / "run" / "SST-2.tsv").is_file()


def test_fsdp_resume_equals_uninterrupted(make_sst2_task, make_teacher, tmp_path):
    """A sharded run killed in its second epoch resumes from its sharded state (torch.distributed.checkpoint)
    and ends as the uninterrupted sharded run does."""
    data = make_sst2_task(n_train=32, n_dev=11, seed=4)
    teacher = make_teacher(model_type="sparsedecoder_cls")
    base = ["--model_name_or_path", str(teacher), "--task_name", "sst2", "--data_dir", str(data), "--max_length",
            "16", "--learning_rate", "1e-3", "--log_interval", "2", "--num_train_epochs", "2", "--save_steps", "2",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--do_train", "--use_cpu",
            "--fsdp"]
    launch("run_finetuning.py", base + ["--output_dir", str(tmp_path / "whole")], 2)
    interrupted = base + ["--output_dir", str(tmp_path / "resumed")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(REPO_ROOT / "tests" / "distributed" / "crashing_run.py"), "3",
           *interrupted]
    crashed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert crashed.returncode != 0
    state = tmp_path / "resumed" / "checkpoint"
    assert [p.name for p in state.glob("sharded-step-*")] == ["sharded-step-6"]
    launch("run_finetuning.py", interrupted, 2)
    assert "resumed from step 6" in (tmp_path / "resumed" / "log.txt").read_text()
    whole, resumed = read_jsonl(tmp_path / "whole" / "metrics.jsonl"), read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in whole] == [r["step"] for r in resumed] == [2, 4, 6, 8]
    for a, b in zip(whole, resumed, strict=True):
        assert a["metrics"] == b["metrics"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
    assert same_weights(tmp_path / "whole" / "best", tmp_path / "resumed" / "best", atol=1e-6)
    assert not state.exists()


@pytest.mark.parametrize("model_type", [pytest.param("sparsebert_cls", marks=pytest.mark.slow), "sparsedecoder_cls"])
def test_fsdp_importance_pass_equals_the_unsharded_one(model_type, make_sst2_task, make_teacher, tmp_path):
    """run_sparsification with --fsdp (the importance pass on the sharded teacher, 11 dev sentences over 2
    processes: uneven shards) scores, reorders and maps as without it."""
    data = make_sst2_task(n_train=16, n_dev=11, seed=4)
    teacher = make_teacher(model_type=model_type, **({"sparsebert_cls": NO_DROPOUT}.get(model_type, {})))
    base = ["--teacher_model_path", str(teacher), "--task_name", "sst2", "--data_dir", str(data), "--max_length",
            "16", "--per_device_eval_batch_size", "4", "--neuron_multiple", "1", "--sparsities", "30,60,90",
            "--use_cpu"]
    launch("run_sparsification.py", base + ["--output_dir", str(tmp_path / "ddp")], 2)
    launch_recording_moves(tmp_path / "moves", "run_sparsification",
                           base + ["--output_dir", str(tmp_path / "fsdp"), "--fsdp"])
    # sharded for the importance pass, and again (reordered, on every process's CPU) for the pruning curve
    assert_only_shards_reach_the_device(tmp_path / "moves", models=2)
    ddp, fsdp = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("ddp", "fsdp"))
    assert fsdp["sparsity_map"] == ddp["sparsity_map"] and fsdp["teacher_dev"] == ddp["teacher_dev"]
    assert [row["dev"] for row in fsdp["pruning_curve"]] == [row["dev"] for row in ddp["pruning_curve"]]
    scores = [json.loads((tmp_path / name / "model" / "importance.json").read_text()) for name in ("ddp", "fsdp")]
    for kind in ("head", "neuron"):
        assert torch.allclose(torch.tensor(scores[0][kind]), torch.tensor(scores[1][kind]), atol=1e-6)
    assert same_weights(tmp_path / "ddp" / "model", tmp_path / "fsdp" / "model", atol=1e-6)
    assert "sharded with FSDP2 over 2 processes" in (tmp_path / "fsdp" / "log.txt").read_text()


def launch_without_agent(script: str, args: list[str], nproc: int, timeout: float) -> list[subprocess.CompletedProcess]:
    """Start ``nproc`` ranks of ``script`` directly (env:// rendezvous, no torchrun agent to end the others
    when one fails); each rank's exit status and output, or a failure if any is still running after ``timeout``."""
    port = free_port()
    ranks = [subprocess.Popen([sys.executable, str(REPO_ROOT / script), *args], cwd=REPO_ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(nproc),
                                   "RANK": str(rank), "LOCAL_RANK": str(rank)})
             for rank in range(nproc)]
    done = []
    try:
        for process in ranks:
            out, err = process.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    except subprocess.TimeoutExpired:
        pytest.fail(f"rank {len(done)} was still running {timeout} s after the start: it waits for a rank that "
                    "exited")
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
                process.wait()
    return done


@pytest.mark.parametrize("failing_rank", [-1, 1])
def test_an_input_error_on_any_rank_ends_every_rank_with_the_same_line(make_sst2_task, make_teacher, tmp_path,
                                                                        failing_rank):
    """Rank 0 alone checks the output folder (-1: it is a file) or rank 1 alone meets an input error: every
    rank stops at once, with exit status 2 and the same one-line message."""
    data = make_sst2_task(n_train=16, n_dev=8)
    taken = tmp_path / "taken"
    taken.write_text("")
    out = taken if failing_rank < 0 else tmp_path / "out"
    args = [str(failing_rank), "--model_name_or_path", str(make_teacher()), "--task_name", "sst2", "--data_dir",
            str(data), "--output_dir", str(out), "--max_steps", "2", "--do_train", "--use_cpu"]
    ranks = launch_without_agent("tests/distributed/input_error.py", args, 2, timeout=120)
    assert [rank.returncode for rank in ranks] == [2, 2], [rank.stderr[-2000:] for rank in ranks]
    lines = [rank.stderr.strip().splitlines()[-1] for rank in ranks]
    expected = (f"error: --output_dir {taken} is a file, not a directory: choose another --output_dir"
                if failing_rank < 0 else "error: rank 1 cannot use this machine's set-up")
    assert lines == [expected, expected]
    assert not any("Traceback" in rank.stderr for rank in ranks)
