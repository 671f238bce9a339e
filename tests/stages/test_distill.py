"""Distillation: examples (masking, truncation, bad rows), a LoRA step, and the Ray Train job (DDP, DeepSpeed, resume).

Teacher rationales come from slim/testing/teacher_mock.py (a named mock of the teacher: templated three-step
rationales from each ml-100k user's history); everything else is real: the data stage, SmolLM2-135M-Instruct,
peft, Ray Train, DeepSpeed.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slim.io import columns as C
from slim.text.prompts import PromptConfig, student_chat_text
from slim.distill import stage as D
from slim.distill import examples as E
from slim.testing.teacher_mock import write_teacher_shards

ROOT = Path(__file__).resolve().parents[2]
PC = PromptConfig(max_history_items=6)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, ray_local, cache_dir):
    """ml-100k through the data stage (40 users) plus short templated teacher rationales with bad rows."""
    from slim.data import DataConfig
    from slim.data import stage as prepare

    d = tmp_path_factory.mktemp("distill")
    prepare.run(DataConfig(run_dir=str(d), source="ml-100k", min_user_interactions=5, min_item_interactions=5,
                           max_users=40, cache_dir=cache_dir))
    expect = write_teacher_shards(d, n_cats=2, n_per=2)
    return d, expect


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from slim.runtime.llm_models import resolve

    return AutoTokenizer.from_pretrained(resolve("smollm2-135m-instruct"))


def tiny_cfg(run_dir, **kw) -> D.DistillConfig:
    base = dict(run_dir=str(run_dir), prompt=PC, num_workers=2, max_seq_len=256, max_examples=16, batch_size=1,
                grad_accum=1, lr=1e-3, max_steps=3, val_fraction=0.25, checkpoint_every=100,
                lora=D.LoraSettings(r=4, alpha=8, dropout=0.0))
    return D.DistillConfig(**{**base, **kw})


def test_examples_mask_prompt_and_count_bad_rows(run_dir, tok):
    d, expect = run_dir
    df, rep = E.build(d, tok, PC, max_seq_len=4096)
    assert (rep.not_ok_status, rep.empty, rep.unparsable, rep.superseded) == (1, 1, 2, 1)
    assert rep.examples == len(df) == expect["good"] and rep.dropped_too_long == 0
    # user 4 failed first and succeeded in a later shard: the later row is used
    assert 4 in set(df[C.USER_ID]) and not {0, 1, 2, 3} & set(df[C.USER_ID])
    for r in df.itertuples():
        n = r.prompt_len
        assert all(x == E.IGNORE for x in r.labels[:n]) and list(r.labels[n:]) == list(r.input_ids[n:])
        answer = tok.decode(r.input_ids[n:])
        assert answer.startswith("Step 1:") and "Step 3:" in answer and answer.endswith("<|im_end|>\n")
    # The prompt is exactly the student's inference prompt (chat template + generation header).
    import pyarrow.parquet as pq

    users = pq.read_table(d / C.USERS_FILE).to_pandas().set_index(C.USER_ID)
    items = pq.read_table(d / C.ITEMS_FILE).to_pandas()
    text = dict(zip(items[C.ITEM_ID], items[C.TEXT]))
    r = df.iloc[0]
    want = student_chat_text(tok, users.loc[r[C.USER_ID], C.ITEM_IDS], text, PC)
    assert tok.decode(r.input_ids[: r.prompt_len]) == want


def test_keep_unstructured_keeps_answers_as_written(run_dir, tok):
    """The demo's toy-teacher switch: answers without the three steps are kept verbatim and counted; failed and
    empty rows are still dropped."""
    d, expect = run_dir
    df, rep = E.build(d, tok, PC, max_seq_len=4096, keep_unstructured=True)
    assert (rep.unparsable, rep.kept_unstructured, rep.empty, rep.not_ok_status) == (0, 2, 1, 1)
    assert rep.examples == len(df) == expect["good"] + 2
    kept = df[df[C.USER_ID] == 1].iloc[0]
    assert tok.decode(kept.input_ids[kept.prompt_len:]).startswith("I cannot say much about this user.")


def test_truncation_cuts_history_never_the_rationale(run_dir, tok):
    d, _ = run_dir
    full, _ = E.build(d, tok, PC, max_seq_len=4096)
    rat_len = (full.input_ids.map(len) - full.prompt_len)
    import pyarrow.parquet as pq

    users = pq.read_table(d / C.USERS_FILE).to_pandas().set_index(C.USER_ID)
    items = pq.read_table(d / C.ITEMS_FILE).to_pandas()
    text = dict(zip(items[C.ITEM_ID], items[C.TEXT]))
    one = student_chat_text(tok, users.loc[int(full.user_id[0]), C.ITEM_IDS], text,
                            dataclasses.replace(PC, max_history_items=1))
    # room for the chat header and about one history item beside a median rationale: some fit, some cannot
    limit = int(rat_len.median()) + len(tok(one)["input_ids"]) + 5
    df, rep = E.build(d, tok, PC, max_seq_len=limit)
    assert rep.history_truncated > 0 and rep.dropped_too_long > 0
    assert rep.examples + rep.dropped_too_long == len(full)
    assert df.input_ids.map(len).max() <= limit
    kept = full.set_index(C.USER_ID)
    for r in df.itertuples():
        # the whole rationale, to its last step, is in every kept example
        assert list(r.input_ids[r.prompt_len:]) == list(kept.loc[r.user_id, "input_ids"][kept.loc[r.user_id,
                                                                                                  "prompt_len"]:])
        assert 1 <= r.history_items <= PC.max_history_items
    with pytest.raises(E.DistillDataError, match="no usable teacher rationales"):
        E.build(d, tok, PC, max_seq_len=int(rat_len.min()) - 1)


def test_lora_step_freezes_base_and_masks_prompt(run_dir, tok):
    """One optimizer step: only adapter weights move; prompt positions get exactly zero loss gradient."""
    import torch
    import torch.nn.functional as F

    from slim.runtime.llm_models import resolve
    from slim.distill.trainloop import collate, load_model

    d, _ = run_dir
    df, _ = E.build(d, tok, PC, max_seq_len=256, max_examples=2)
    conf = {"base_path": resolve("smollm2-135m-instruct"), "bf16": False,
            "lora": dataclasses.asdict(D.LoraSettings(r=4, alpha=8, dropout=0.0))}
    _, model = load_model(conf)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = collate(df.to_dict("records"), tok.pad_token_id, "cpu")
    out = model(**batch)
    out.logits.retain_grad()
    out.loss.backward()
    # shifted labels: logits at t predict token t+1; padded and prompt targets are IGNORE
    tgt = batch["labels"][:, 1:]
    grad = out.logits.grad[:, :-1].abs().sum(-1)  # [B, T-1]
    assert float(grad[tgt == E.IGNORE].max()) == 0.0 and bool((grad[tgt != E.IGNORE] > 0).all())
    manual = F.cross_entropy(out.logits[:, :-1][tgt != E.IGNORE].float(), tgt[tgt != E.IGNORE])
    assert abs(float(manual.detach()) - float(out.loss.detach())) < 1e-4
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3).step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and moved <= set(names)
    assert any("lora_B" in n for n in moved)  # B starts at zero: the adapter now changes the output


def test_more_gpus_than_the_cluster_fails_fast(run_dir, ray_local):
    d, _ = run_dir
    cfg = tiny_cfg(d, use_gpu=True, num_workers=4)
    t0 = time.perf_counter()
    with pytest.raises(D.DistillError, match=r"num_workers=4 .* needs 4 GPUs, but the Ray cluster has 0"):
        D.run(cfg)
    assert time.perf_counter() - t0 < 60 and not (d / C.STUDENT_ADAPTER).exists()


def _job(run_dir, address, extra=()):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "jobs/distill.py", "--config", "configs/tiny.yaml", f"run_dir={run_dir}",
            f"ray_address={address}", "distill.max_examples=16", "distill.max_seq_len=256", "distill.batch_size=1",
            "distill.grad_accum=1", "distill.lr=0.001", "distill.max_steps=4", "distill.checkpoint_every=1",
            "distill.val_fraction=0.25", "distill.prompt.max_history_items=6",
            "distill.keep_unstructured=false", *extra]  # tiny.yaml keeps them for its toy teacher; tests drop them
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.mark.parametrize("strategy", ["ddp", pytest.param("deepspeed", marks=pytest.mark.slow)])
def test_two_workers_resume_after_kill(run_dir, ray_local, tmp_path, strategy):
    """Kill the job after its first checkpoint; the same command continues from it, finishes, and loss fell."""
    import shutil

    src, _ = run_dir
    d = tmp_path / "run"
    for sub in ("data", "teacher"):
        shutil.copytree(src / sub, d / sub)
    address = ray_local.get_runtime_context().gcs_address
    p = _job(d, address, [f"distill.strategy={strategy}"])
    deadline = time.time() + 420
    # Ray Train lists a checkpoint in its snapshot once it is whole in storage; that is what a rerun resumes from.
    while not list((d / D.RAY_DIR).glob("*/checkpoint_manager_snapshot.json")) and p.poll() is None:
        assert time.time() < deadline, "no checkpoint within 7 minutes"
        time.sleep(0.5)
    assert p.poll() is None, p.stdout.read()[-3000:]
    os.killpg(p.pid, signal.SIGKILL)  # the driver and its children, mid-training
    p.wait()
    assert not (d / "distill" / "manifest.json").exists()
    p = _job(d, address, [f"distill.strategy={strategy}"])
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    m = json.loads((d / D.TRAIN_METRICS).read_text())
    assert m["sessions"][0] == 0 and len(m["sessions"]) == 2 and 1 <= m["sessions"][1] < 4  # resumed, not restarted
    assert [t["step"] for t in m["train"]] == [1, 2, 3, 4] and m["steps"] == 4
    assert m["num_workers"] == 2 and m["strategy"] == strategy
    assert m["val_loss_after"] < m["val_loss_before"]
    assert m["train"][-1]["loss"] < m["train"][0]["loss"]
    assert (d / C.STUDENT_ADAPTER / "adapter_config.json").exists()
    assert m["examples"]["unparsable"] == 2 and m["examples"]["empty"] == 1
    # the same command again: the manifest matches, nothing reruns
    p = _job(d, address, [f"distill.strategy={strategy}"])
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0 and "skipping" in out


@pytest.mark.slow
def test_deepspeed_zero2_matches_ddp(run_dir, ray_local, tmp_path):
    """DeepSpeed ZeRO-2 (gloo/shm on CPU, 2 workers) trains the same losses as DDP; first use compiles ~90 s."""
    import shutil

    d, _ = run_dir
    losses = {}
    for strategy in ("ddp", "deepspeed"):
        rd = tmp_path / strategy
        shutil.copytree(d / "data", rd / "data")
        shutil.copytree(d / "teacher", rd / "teacher")
        D.run(tiny_cfg(rd, strategy=strategy, max_steps=2, merge=strategy == "deepspeed"))
        m = json.loads((rd / D.TRAIN_METRICS).read_text())
        losses[strategy] = [t["loss"] for t in m["train"]]
        assert m["num_workers"] == 2 and (rd / C.STUDENT_ADAPTER / "adapter_model.safetensors").exists()
    assert losses["deepspeed"] == pytest.approx(losses["ddp"], rel=1e-3)
    assert (tmp_path / "deepspeed" / C.STUDENT_MERGED / "config.json").exists()


@pytest.mark.gpu
def test_deepspeed_bf16_nccl_on_gpus(run_dir, ray_local, tmp_path):
    import shutil

    import torch

    d, _ = run_dir
    shutil.copytree(d / "data", tmp_path / "data")
    shutil.copytree(d / "teacher", tmp_path / "teacher")
    n = torch.cuda.device_count()
    D.run(tiny_cfg(tmp_path, strategy="deepspeed", use_gpu=True, num_workers=n, max_steps=4))
    m = json.loads((tmp_path / D.TRAIN_METRICS).read_text())
    assert m["use_gpu"] and m["val_loss_after"] < m["val_loss_before"]
