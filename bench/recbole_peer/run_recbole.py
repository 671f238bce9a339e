"""RecBole 1.2.1 peer run (executed in its own venv): one backbone x seed on atomic files written by
bench/bench_recommenders.py, trained with matched hyperparameters and evaluated on OUR stored candidates.

Evaluation is patched for speed (documented in the report): RecBole's sampled evaluation runs the encoder once
per candidate; here each user is scored once with `full_sort_predict` and the same 1 + 100 candidates are
gathered, which gives the same ranks. Early stopping uses uni100 NDCG@10 on the valid split, as ours does.
Usage: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 python run_recbole.py --work DIR --model SASRec --seed 0 --epochs 3
"""

import argparse
import copy
import json
import time

import numpy as np
import torch

MODEL_ARGS = {  # matched to slim's defaults (hidden 64, dropout 0.2, SASRec 2x2 heads, inner 256, SRGNN 1 step)
    "GRU4Rec": {"embedding_size": 64, "hidden_size": 64, "num_layers": 1, "dropout_prob": 0.2},
    "SASRec": {"hidden_size": 64, "inner_size": 256, "n_layers": 2, "n_heads": 2, "hidden_dropout_prob": 0.2,
               "attn_dropout_prob": 0.2, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "initializer_range": 0.02},
    "SRGNN": {"embedding_size": 64, "step": 1},
}


def config_dict(a) -> dict:
    return {
        "data_path": a.work, "dataset": "rb", "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp", "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "dummy"]},
        "MAX_ITEM_LIST_LENGTH": a.max_len,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        # RecBole's sequential models offer BPR or CE, not BCE: our BCE with 1 uniform negative is matched by
        # BPR with 1 uniform negative (same sampled pair per target, pairwise loss).
        "loss_type": "BPR" if a.loss == "bce" else "CE",
        "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1} if a.loss == "bce" else None,
        "epochs": a.epochs, "train_batch_size": a.batch_size, "eval_batch_size": 1024, "learning_rate": a.lr,
        "seed": a.seed, "reproducibility": True, "metrics": ["NDCG", "Hit", "MRR"], "topk": [10, 20],
        "valid_metric": "NDCG@10", "device": "cpu", "use_gpu": False, "show_progress": False,
        "checkpoint_dir": f"{a.work}/rb_ckpt", "user_inter_num_interval": "[0,inf)",
        "item_inter_num_interval": "[0,inf)", **MODEL_ARGS[a.model],
    }


def ranks(model, loader, dataset, cands: dict) -> np.ndarray:
    """Score each user once (full_sort_predict) and rank our stored target among its 100 negatives."""
    out = []
    model.eval()
    with torch.no_grad():
        for batch in loader:
            inter = batch[0]
            scores = model.full_sort_predict(inter).view(len(inter), -1)  # [B, n_items] internal ids
            users = dataset.id2token("user_id", inter["user_id"].numpy())
            rows = np.stack([cands[u] for u in users])  # [B, 101] internal ids, target first
            s = torch.gather(scores, 1, torch.from_numpy(rows)).numpy().astype(np.float64)
            out.append((s >= s[:, :1]).sum(1) - 1)  # pessimistic ties, as slim.recsys.metrics.target_rank
    return np.concatenate(out)


def metrics(r: np.ndarray) -> dict:
    out = {}
    for k in (10, 20):
        hit = r < k
        out[f"NDCG@{k}"] = 100 * float(np.mean(np.where(hit, 1 / np.log2(r + 2.0), 0.0)))
        out[f"Hit@{k}"] = 100 * float(np.mean(hit))
    return out


def main():
    p = argparse.ArgumentParser()
    for k, v in (("--work", None), ("--model", "SASRec"), ("--seed", 0), ("--epochs", 3), ("--patience", 3),
                 ("--batch-size", 256), ("--lr", 1e-3), ("--max-len", 50), ("--loss", "bce"), ("--threads", 1),
                 ("--out", None)):
        p.add_argument(k, type=type(v) if v is not None else str, default=v)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.trainer import Trainer
    from recbole.utils import get_model, init_seed

    config = Config(model=a.model, config_dict=config_dict(a))
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(a.model)(config, train_data.dataset)
    trainer = Trainer(config, model)
    raw = np.load(f"{a.work}/candidates.npz")
    cands = {}
    for split in ("valid", "test"):
        tok = dataset.token2id("item_id", raw[f"{split}_cand"].astype(str).ravel()).reshape(raw[f"{split}_cand"].shape)
        cands[split] = dict(zip(raw["user_token"].astype(str).tolist(), tok))
    n_train = len(train_data.dataset)  # augmented prefixes = next-item targets
    best, best_state, bad, hist, t_train, seen = -1.0, None, 0, [], 0.0, 0
    for epoch in range(a.epochs):
        t0 = time.perf_counter()
        loss = trainer._train_epoch(train_data, epoch, show_progress=False)
        t_train += time.perf_counter() - t0
        seen += n_train
        val = metrics(ranks(model, valid_data, dataset, cands["valid"]))["NDCG@10"]
        hist.append({"epoch": epoch, "loss": float(loss if not isinstance(loss, tuple) else sum(loss)),
                     "valid_ndcg10": val})
        print(json.dumps(hist[-1]), flush=True)
        if val > best:
            best, best_state, bad = val, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if bad >= a.patience:
                break
    model.load_state_dict(best_state)
    rec = {"impl": "recbole", "backbone": a.model.lower(), "variant": "id", "seed": a.seed,
           "best_valid_ndcg10": best, "epochs_run": len(hist), "history": hist, "train_targets": seen,
           "train_seconds": t_train, "targets_per_s": seen / t_train, "n_items": dataset.item_num - 1,
           "test": {"uni100": metrics(ranks(model, test_data, dataset, cands["test"]))}}
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
