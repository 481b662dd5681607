"""Recovery after pruning: dense, one-shot, and recovered quality, with the compute spent.

Rows (``--rows`` picks a subset):

* ``cnn``: the demo's digits CNN (scikit-learn digits, fixed split) at 90% unstructured, 2:4 and
  50% channels (shrunk), over ``--seeds`` (init and batch order). Dense and pruned models get the
  same total epochs: the dense row trains ``--epochs``; the pruned row trains ``--dense-epochs``
  dense, then prunes during training (cubic schedule over the first half of the remaining epochs;
  2:4: 3:4 at once, 2:4 a quarter of the way in) while it distils from the dense model, mixed
  with the labels' loss. One-shot: the dense model pruned once, no training. Metric: test
  accuracy (540 images: one = 0.19 pt), the mean over seeds and the spread of the loss.
* ``minilm``: all-MiniLM-L6-v2's encoder at 2:4 (SparseGPT, by default with block reconstruction
  and refine, on 256 x 128 tokens of calibration-module docstrings, evaluation sentences cut out)
  and 50% channels (l2), then distilled from the dense model (pooled-embedding cosine plus 5 x
  every layer's hidden-state MSE; dropout off, word embeddings frozen, the teacher's targets
  computed once per batch and cached, bfloat16 autocast) on sentences of the calibration modules
  and TRAINING_MODULES. Metric:
  mean cosine of sentence embeddings against dense on 512 sentences of EVALUATION_MODULES (no
  training sentence among them), measured after each CPU-minute of training.
* ``smollm2``: SmolLM2-135M at 2:4 and 50% unstructured (SparseGPT), then distilled (logits KL) on
  calibration-module docstrings. Metric: perplexity on disjoint docstrings.

Compute is process CPU time (all threads) of the recovery alone (evaluations excluded), in
CPU-minutes.

    python benchmarks/recovery.py [--rows cnn,minilm,smollm2] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time

import torch
import torch.nn.functional as F

import prunekit as pk
from prunekit.demo import DemoSettings, accuracy, digits_cnn, load_digits_split, train
from prunekit.evaluate import (
    CALIBRATION_MODULES,
    EVALUATION_MODULES,
    docstring_corpus,
    embedding_agreement,
    length_batches,
    mean_pooled,
    perplexity,
    sentences,
    token_windows,
)
from prunekit.train import distill, prune_and_recover

ROWS: list[dict] = []


def row(model: str, config: str, metric: str, dense: float, oneshot: float, recovered: float,
        cpu_s: float, work: str, curve: str = "") -> None:  # fmt: skip
    ROWS.append(dict(model=model, config=config, metric=metric, dense=dense, oneshot=oneshot,
                     recovered=recovered, cpu_min=cpu_s / 60, work=work, curve=curve))  # fmt: skip
    r = ROWS[-1]
    print(f"  {model} {config}: dense {dense:.4g} one-shot {oneshot:.4g} recovered "
          f"{recovered:.4g} ({r['cpu_min']:.2f} CPU-min, {work}) {curve}", flush=True)  # fmt: skip


# ------------------------------------------------------------------------------------- digits CNN
def cnn_rows(epochs: int, dense_epochs: int, seeds: list[int]) -> None:
    """Per seed (initialisation and batch order; the train/test split is fixed): a dense model
    trains ``epochs``; each pruned model trains ``dense_epochs`` dense, then prunes during the
    remaining epochs (cubic schedule over their first half; 2:4: 3:4 at once, 2:4 a quarter of
    the way in) while it distils from the final dense model with the labels' loss. Same total
    epochs for both."""
    x_tr, y_tr, x_te, y_te = load_digits_split(0)
    configs = {
        "90% unstructured": pk.PruneConfig(sparsity=0.9, scope="global"),
        "2:4 (not the stem)": pk.PruneConfig(granularity="2:4", exclude=["0"]),
        "50% channels": pk.PruneConfig(sparsity=0.5, granularity="channel", criterion="l2"),
    }
    results: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in configs}
    for seed in seeds:
        settings = DemoSettings(seed=seed)
        torch.manual_seed(seed)
        base = digits_cnn()
        train(base, x_tr, y_tr, settings, dense_epochs, "dense (first part)", progress=False)
        dense = copy.deepcopy(base)
        train(dense, x_tr, y_tr, settings, epochs - dense_epochs, "dense (rest)", progress=False)
        dense.eval()
        dense_acc = accuracy(dense, x_te, y_te) * 100
        gen = torch.Generator().manual_seed(seed)
        batches = [
            (x_tr[idx], y_tr[idx])
            for _ in range(epochs - dense_epochs)
            for idx in torch.randperm(len(x_tr), generator=gen).split(settings.batch_size)
        ]
        per_epoch = -(-len(x_tr) // settings.batch_size)
        ramp = len(batches) // 2 // per_epoch * per_epoch  # prune over the first half
        example = x_tr[:1]
        for label, config in configs.items():
            oneshot = copy.deepcopy(dense)
            pk.prune(oneshot, config, example_inputs=example)
            if config.granularity == "2:4":  # 3:4 at once, 2:4 a quarter of the way in
                config = dataclasses.replace(config, schedule=pk.Iterative(2, every=ramp // 2))
                recover = len(batches) - ramp // 2
            else:
                schedule = pk.Cubic(0, ramp, every=max(1, per_epoch // 2))
                config = dataclasses.replace(config, schedule=schedule)
                recover = len(batches) - ramp
            result = prune_and_recover(
                copy.deepcopy(base),
                config,
                batches,
                recover_steps=recover,
                teacher=dense,
                example_inputs=example,
                inputs=lambda b: b[0],
                loss_fn=lambda out, b: F.cross_entropy(out, b[1]),
                lr=settings.lr,
                alpha=0.5,
                seed=seed,
            )
            recovered = accuracy(result.model.eval(), x_te, y_te) * 100
            results[label].append((dense_acc, accuracy(oneshot, x_te, y_te) * 100, recovered,
                                   result.history.cpu_seconds))  # fmt: skip
            print(f"  seed {seed} {label}: dense {dense_acc:.2f} recovered {recovered:.2f}",
                  flush=True)  # fmt: skip
    for label, runs in results.items():
        d, o, r, cpu = (torch.tensor(v, dtype=torch.float64) for v in zip(*runs, strict=True))
        lost = d - r
        row("digits CNN", label, "test acc %", float(d.mean()), float(o.mean()),
            float(r.mean()), float(cpu.mean()), f"mean of {len(runs)} seeds, lost "
            f"{float(lost.mean()):.2f} +- {float(lost.std()) if len(runs) > 1 else 0:.2f} pt "
            f"(per seed {', '.join(f'{v:.2f}' for v in lost.tolist())}); {epochs} epochs each, "
            f"pruning from epoch {dense_epochs}")  # fmt: skip


# ---------------------------------------------------------------------------------- MiniLM
#: stdlib modules whose docstrings add distillation text to CALIBRATION_MODULES' (never
#: EVALUATION_MODULES'; sentences that also occur in the evaluation corpus are dropped)
TRAINING_MODULES = (
    "abc", "ast", "base64", "bz2", "cmd", "code", "codeop", "colorsys", "contextlib",
    "contextvars", "copy", "dis", "email.utils", "email.parser", "filecmp", "fileinput", "fnmatch",
    "getopt", "glob", "graphlib", "gzip", "hashlib", "hmac", "html.parser", "http.server",
    "http.cookies", "importlib", "ipaddress", "linecache", "lzma", "mimetypes", "numbers",
    "operator", "optparse", "platform", "plistlib", "pprint", "pstats", "pydoc", "quopri",
    "reprlib", "runpy", "secrets", "shelve", "shlex", "socketserver", "symtable", "sysconfig",
    "timeit", "tokenize", "trace", "traceback", "tracemalloc", "types", "uuid", "warnings", "wave",
    "weakref", "wsgiref.simple_server", "xmlrpc.client", "zipapp", "zoneinfo", "ctypes", "io",
    "multiprocessing.pool", "unittest.mock", "importlib.metadata", "email.headerregistry",
    "http.cookiejar", "pickletools", "netrc",
)  # fmt: skip


def training_sentences(extended: bool, held_out: list[str]) -> list[str]:
    """Distillation sentences: those of the calibration modules (and of TRAINING_MODULES when
    ``extended``), none of them in ``held_out``."""
    modules = CALIBRATION_MODULES + (TRAINING_MODULES if extended else ())
    if set(modules) & set(EVALUATION_MODULES):
        raise SystemExit("training and evaluation modules overlap")
    held = set(held_out)
    return [s for s in sentences(docstring_corpus(modules)) if s not in held]


def calibration_text(held_out: list[str]) -> list[str]:
    """The calibration modules' docstrings with every sentence of ``held_out`` cut out (a few
    occur in both corpora), for the one-shot prune's calibration windows."""
    shared = set(sentences(docstring_corpus(CALIBRATION_MODULES))) & set(held_out)
    out = []
    for doc in docstring_corpus(CALIBRATION_MODULES):
        for sentence in shared:
            doc = doc.replace(sentence, "")
        out.append(doc)
    return out


def write_training_file(path: str) -> None:
    """Write the MiniLM rows' training text as JSONL (one docstring of the calibration modules
    and TRAINING_MODULES a line, every sentence of the evaluation corpus cut out), for
    ``prunekit recover --data``: disjoint from what ``prunekit eval`` judges on."""
    import json

    held_out = sentences(docstring_corpus(EVALUATION_MODULES))
    modules = CALIBRATION_MODULES + TRAINING_MODULES
    if set(modules) & set(EVALUATION_MODULES):
        raise SystemExit("training and evaluation modules overlap")
    shared = set(sentences(docstring_corpus(modules))) & set(held_out)
    lines = []
    for doc in docstring_corpus(modules):
        for sentence in shared:
            doc = doc.replace(sentence, "")
        lines.append(json.dumps({"text": " ".join(doc.split())}))
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {path}: {len(lines)} docstrings, {len(shared)} evaluation sentences cut out")


def by_cpu_minute(evaluate, log):
    """An ``eval_fn`` (called every step) that evaluates once each whole CPU-minute of training
    has passed (the training loop's own CPU time: evaluations excluded) and logs it."""
    state = {"start": time.process_time(), "evals": 0.0, "next": 1}

    def eval_fn(model, step):
        eval0 = time.process_time()
        minutes = (eval0 - state["start"] - state["evals"]) / 60
        value = None
        if minutes >= state["next"]:
            state["next"] = int(minutes) + 1
            value = (round(minutes, 2), evaluate(model))
            log.append((step, *value))
            print(f"    step {step} ({minutes:.2f} CPU-min): {value[1]:.4f}", flush=True)
        state["evals"] += time.process_time() - eval0
        return value

    return eval_fn


def minilm_rows(cpu_minutes: float, lr: float, target: str, only: str, start: str, batch: int,
                text: str, dropout: bool, freeze: bool, layers: bool, nsamples: int,
                cache: bool, warmup: int, layer_weight: float, bf16: bool) -> None:  # fmt: skip
    from prunekit.pretrained import load_minilm

    dense, tok = load_minilm()
    held_out = sentences(docstring_corpus(EVALUATION_MODULES))
    body = token_windows(calibration_text(held_out), tok, 126, nsamples)
    cls = torch.full((len(body), 1), tok.cls_token_id)
    sep = torch.full((len(body), 1), tok.sep_token_id)
    ids = torch.cat([cls, body, sep], 1)  # [nsamples, 128]
    calib = [{"input_ids": c, "attention_mask": torch.ones_like(c)} for c in ids.split(16)]
    texts = training_sentences(text == "extended", held_out)
    train_batches = length_batches(texts, tok, batch)[0]
    order = torch.randperm(len(train_batches), generator=torch.Generator().manual_seed(0))
    train_batches = [train_batches[i] for i in order]
    evals = length_batches(held_out[:512], tok, 64)[0]
    reference = mean_pooled(dense, evals)
    print(f"MiniLM: {len(texts)} training sentences ({text}), 512 held-out", flush=True)

    def cosine(model):
        return embedding_agreement(reference, mean_pooled(model, evals))["cosine"]

    names = [f"encoder.layer.{i}" for i in range(dense.config.num_hidden_layers)]
    example = dict(calib[0])
    nm = dict(granularity="2:4", criterion="sparsegpt", data=calib)
    if start == "block":
        nm.update(reconstruct="block", refine=True)
    for label, kwargs in [
        ("2:4 SparseGPT", nm),
        ("50% channels", dict(sparsity=0.5, granularity="channel", criterion="l2",
                              example_inputs=example)),
    ]:  # fmt: skip
        if only and not label.startswith(only):
            continue
        student = copy.deepcopy(dense)
        prune0 = time.process_time()
        pk.prune(student, include=r"encoder\..*", **kwargs)
        prune_cpu = time.process_time() - prune0
        before = cosine(student)
        print(f"  {label} one-shot cosine {before:.4f} ({prune_cpu:.0f} CPU-s)", flush=True)
        if freeze:
            student.embeddings.requires_grad_(False)  # not pruned; most of the parameters
        # the judged embedding (pooled cosine) or the last hidden state, plus every layer's MSE;
        # a short warm-up, then cosine decay over the CPU budget
        marks: list[tuple[int, float, float]] = []
        history = distill(student, dense, train_batches, steps=100_000, lr=lr, target=target,
                          hidden_layers=names if layers else None, warmup=warmup,
                          cpu_budget=cpu_minutes * 60, dropout=dropout, cache_teacher=cache,
                          hidden_weight=layer_weight, autocast=torch.bfloat16 if bf16 else None,
                          eval_fn=by_cpu_minute(cosine, marks), eval_every=1)  # fmt: skip
        if kwargs["granularity"] == "channel":
            student = pk.shrink(student, example)
        after = cosine(student)
        curve = " ".join(f"{m:.1f}min/{s}:{v:.3f}" for s, m, v in marks)
        two_four = label.startswith("2:4")
        recipe = f"start {start}, {len(body)} x 128 calibration tokens, " if two_four else ""
        row("all-MiniLM-L6-v2", label, "cosine", 1.0, before, after, history.cpu_seconds,
            f"{recipe}prune {prune_cpu / 60:.1f} CPU-min; "
            f"{history.steps} steps x {batch} sentences ({text} text), teacher "
            f"{'cached' if cache else 'run every step'}, loss {target}"
            f"{f'+{layer_weight:g} x layers' if layers else ''}, lr {lr:g}, warm-up {warmup}, "
            f"{'bfloat16 autocast' if bf16 else 'float32'}, "
            f"dropout {'on' if dropout else 'off'}, embeddings {'frozen' if freeze else 'trained'}",
            f"[cosine by CPU-min/step {curve}]")  # fmt: skip


# ---------------------------------------------------------------------------------- SmolLM2
def smollm2_rows(cpu_minutes: float, lr: float, seqlen: int, batch: int, only: str,
                 evals: int) -> None:  # fmt: skip
    from prunekit.pretrained import load_smollm2

    dense, tok = load_smollm2()
    train_ids = token_windows(docstring_corpus(CALIBRATION_MODULES), tok, seqlen)
    calib = [{"input_ids": c} for c in train_ids[:32].split(8)]
    order = torch.randperm(len(train_ids), generator=torch.Generator().manual_seed(0))
    train_batches = [{"input_ids": c} for c in train_ids[order].split(batch)]
    eval_ids = token_windows(docstring_corpus(EVALUATION_MODULES), tok, 256, 24)
    eval_batches = list(eval_ids.split(4))
    print(f"SmolLM2: {train_ids.numel():,} training tokens, {eval_ids.numel():,} eval tokens",
          flush=True)  # fmt: skip

    def ppl(model, step=None):
        return perplexity(model, eval_batches)

    dense_ppl = ppl(dense)
    print(f"  dense perplexity {dense_ppl:.2f}", flush=True)
    for label, kwargs in [("2:4 SparseGPT", dict(granularity="2:4")),
                          ("50% SparseGPT", dict(sparsity=0.5))]:  # fmt: skip
        if only and not label.startswith(only):
            continue
        student = copy.deepcopy(dense)
        pk.prune(student, criterion="sparsegpt", data=calib, **kwargs)
        before = ppl(student)
        print(f"  {label} one-shot perplexity {before:.2f}", flush=True)
        student.get_input_embeddings().weight.requires_grad_(False)  # tied, unpruned
        spent = [time.process_time(), 0.0]  # start, CPU of evaluations so far

        def ppl_logged(model, step, spent=spent):
            eval0 = time.process_time()
            value = ppl(model)
            minutes = (eval0 - spent[0] - spent[1]) / 60
            spent[1] += time.process_time() - eval0
            print(f"    step {step} ({minutes:.1f} CPU-min): perplexity {value:.2f}", flush=True)
            return (round(minutes, 1), value)

        # a short warm-up, then cosine decay over the CPU budget (run_training's lr_factor)
        history = distill(student, dense, train_batches, steps=100_000, lr=lr, temperature=1.0,
                          warmup=5, cpu_budget=cpu_minutes * 60, eval_fn=ppl_logged,
                          eval_every=evals)  # fmt: skip
        final = history.evals[-1][1][1]
        curve = " ".join(f"{s}/{m}min:{v:.1f}" for s, (m, v) in history.evals)
        closed = (before - final) / (before - dense_ppl)
        row("SmolLM2-135M", label, "perplexity", dense_ppl, before, final,
            history.cpu_seconds, f"{history.steps} steps x {batch}x{seqlen} tokens, "
            f"{closed:.0%} of gap closed", f"[ppl by step/CPU-min {curve}]")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="cnn,minilm,smollm2")
    parser.add_argument(
        "--write-train",
        default=None,
        metavar="FILE.jsonl",
        help="write the MiniLM training docstrings (disjoint from the evaluation text) and exit",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=40, help="CNN: total epochs, every row")
    parser.add_argument("--dense-epochs", type=int, default=5, help="CNN: before pruning starts")
    parser.add_argument("--seeds", default="0,1,2", help="CNN: seeds of init and batch order")
    parser.add_argument("--minilm-cpu-minutes", type=float, default=10.0)
    parser.add_argument("--minilm-lr", type=float, default=5e-4)
    parser.add_argument("--minilm-target", default="pooled", choices=("pooled", "hidden"))
    parser.add_argument("--minilm-only", default="", help="run only the row starting so (2:4)")
    parser.add_argument(
        "--minilm-start",
        default="block",
        choices=("block", "sparsegpt"),
        help="2:4 one-shot: SparseGPT, or + block reconstruction and refine",
    )
    parser.add_argument("--minilm-batch", type=int, default=32, help="sentences per step")
    parser.add_argument(
        "--minilm-text",
        default="extended",
        choices=("extended", "calibration"),
        help="distillation text: calibration modules (+ TRAINING_MODULES)",
    )
    parser.add_argument("--minilm-dropout", action="store_true", help="keep dropout in training")
    parser.add_argument("--minilm-train-embeddings", action="store_true")
    parser.add_argument("--minilm-no-layers", action="store_true", help="no per-layer MSE")
    parser.add_argument("--minilm-nsamples", type=int, default=256, help="calibration windows")
    parser.add_argument("--minilm-no-cache", action="store_true", help="run the teacher each step")
    parser.add_argument("--minilm-warmup", type=int, default=10, help="warm-up steps")
    parser.add_argument("--minilm-layer-weight", type=float, default=5.0, help="per-layer MSE")
    parser.add_argument("--minilm-float32", action="store_true", help="no bfloat16 autocast")
    parser.add_argument("--smollm2-cpu-minutes", type=float, default=30.0)
    parser.add_argument("--smollm2-lr", type=float, default=1e-4)
    parser.add_argument("--smollm2-eval-every", type=int, default=20, help="steps per evaluation")
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--smollm2-only", default="", help="run only the row starting so (2:4)")
    args = parser.parse_args()
    if args.write_train:
        write_training_file(args.write_train)
        return
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = args.rows.split(",")
    if "cnn" in rows:
        cnn_rows(args.epochs, args.dense_epochs, [int(v) for v in args.seeds.split(",")])
    if "minilm" in rows:
        minilm_rows(args.minilm_cpu_minutes, args.minilm_lr, args.minilm_target, args.minilm_only,
                    args.minilm_start, args.minilm_batch, args.minilm_text, args.minilm_dropout,
                    not args.minilm_train_embeddings, not args.minilm_no_layers,
                    args.minilm_nsamples, not args.minilm_no_cache, args.minilm_warmup,
                    args.minilm_layer_weight, not args.minilm_float32)  # fmt: skip
    if "smollm2" in rows:
        smollm2_rows(
            args.smollm2_cpu_minutes,
            args.smollm2_lr,
            args.seqlen,
            args.batch,
            args.smollm2_only,
            args.smollm2_eval_every,
        )
    print(f"\nrecovery benchmark, {args.threads} threads, {time.perf_counter() - start:.0f} s wall")
    print(f"{'model':17} {'config':19} {'metric':11} {'dense':>8} {'one-shot':>9} "
          f"{'recovered':>9} {'CPU-min':>7}  work")  # fmt: skip
    for r in ROWS:
        cells = f"{r['dense']:8.4g} {r['oneshot']:9.4g} {r['recovered']:9.4g} {r['cpu_min']:7.2f}"
        print(f"{r['model']:17} {r['config']:19} {r['metric']:11} {cells}  {r['work']}")
    for r in ROWS:
        if r["curve"]:
            print(f"{r['model']} {r['config']}: {r['curve']}")


if __name__ == "__main__":
    main()
