"""End to end against TRL's GKDTrainer: the same teacher, students, token blocks, objective
and optimizer, trained by `distill run` (in process: distill.train.run on a recipe, so every
per-step cost of the CLI's loop is in) and by TRL 1.16's ``GKDTrainer`` (lmbda 0, beta 0:
its generalized JSD is then the forward KL; a subclass adds the CE half).

    python benchmarks/vs_trl.py                      # 3 interleaved repeats, 60 steps each
    python benchmarks/vs_trl.py --repeats 5 --cases same

Cases: ``same`` (dense Llama teacher and student, efficient MoE forward off, fused loss
on), ``same-unfused`` (the same with ``loss.fused: off``), ``moe`` (the toolkit's defaults
with a Llama 4 MoE student, scout-tiny, and the dense teacher; TRL runs transformers' own MoE
forward), ``moe-teacher`` (the same with a Llama 4 MoE teacher, the quickstart's: the
toolkit's efficient MoE forward then runs on both models). Every run
is a subprocess of its own (its peak RSS, ru_maxrss, is its own), distill and TRL taking
turns. Both start from the same saved weights and read the same blocks in the same order
(distill's block order, written out for TRL), fp32 on the CPU, AdamW (lr 1e-3, betas
0.9/0.999, eps 1e-8, weight decay 0.01), constant LR without warmup, gradients clipped at
1.0. The per-step losses of both must agree: the script prints their largest difference.
Tokens/s is steady state: from the end of step --skip to the end of the last step, for both
(start-up, evaluation and saving excluded); ``wall`` is the whole run's call.

TRL and liger-kernel are benchmark-only dependencies: ``pip install -e .[bench]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LR, WEIGHT_DECAY, MAX_GRAD_NORM, SEED = 1e-3, 0.01, 1.0, 0
CASES = ("same", "same-unfused", "moe", "moe-teacher")
# The Llama 4 MoE teacher of the ``moe-teacher`` case: the quickstart's (wider and deeper
# than scout-tiny, 4 experts), so that both sides of the step route tokens to experts.
MOE_TEACHER = {"hidden_size": 128, "num_hidden_layers": 4, "num_local_experts": 4,
               "intermediate_size": 256, "intermediate_size_mlp": 512, "head_dim": 32}


def _teacher_dir(case: str) -> str:
    return "moe_teacher" if case == "moe-teacher" else "teacher"


def _student_dir(case: str) -> str:
    return "moe" if case.startswith("moe") else "dense"


def _data_recipe_overrides(work: Path, args) -> list[str]:
    return ["data.source=stdlib", f"data.max_chars={args.max_chars}",
            f"data.block_size={args.seq}", "data.vocab_size=4096",
            "data.validation_fraction=0.02", f"data.cache_dir={work / 'cache'}"]


def _llama_config(vocab: int, hidden: int, layers: int, heads: int, kv_heads: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2,
                       num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, max_position_embeddings=512,
                       tie_word_embeddings=False)


def prepare(work: Path, args) -> None:
    """Data (distill's own pipeline, cached under ``work``), the three models' weights saved
    once, and the blocks of every step in distill's order (for TRL)."""
    import torch

    import students
    from distill.corpus import load_corpus
    from distill.data import BlockOrder, prepare_data
    from distill.recipe import load_recipe

    recipe = load_recipe(None, _data_recipe_overrides(work, args))
    data = prepare_data(recipe.data, load_corpus(recipe.data), verbose=False)
    vocab = len(data.tokenizer)
    torch.manual_seed(SEED)
    models = {"teacher": students.build_model(_llama_config(vocab, 256, 4, 4, 2), False),
              "dense": students.build_model(_llama_config(vocab, 128, 2, 4, 2), False),
              "moe": students.build_model(students.model_config("scout-tiny", {}, vocab), False),
              "moe_teacher": students.build_model(
                  students.model_config("scout-tiny", MOE_TEACHER, vocab), False)}
    for name, model in models.items():
        model.save_pretrained(work / "models" / name)
        data.tokenizer.save_pretrained(work / "models" / name)  # distill checks the vocabulary
    order = BlockOrder(len(data.train), args.batch, SEED, 0, 1)
    rows = torch.cat([data.train[order.next_indices()].long() for _ in range(args.steps)])
    torch.save(rows, work / "blocks.pt")  # (steps * batch, seq + 1)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker_distill(work: Path, case: str, args) -> dict:
    from distill.recipe import load_recipe
    from distill.train import run

    student = _student_dir(case)
    out = work / f"distill-{case}"
    overrides = _data_recipe_overrides(work, args) + [
        f"output_dir={out}", f"seed={SEED}", "teacher.kind=hf",
        f"teacher.hf.name_or_path={work / 'models' / _teacher_dir(case)}",
        "student.init=pretrained", f"student.name_or_path={work / 'models' / student}",
        "loss.divergence=forward_kl", "loss.soft_weight.start=0.5", "loss.temperature=1.0",
        "loss.router_aux_weight=0", f"train.max_steps={args.steps}",
        f"train.micro_batch_size={args.batch}", "train.grad_accum_steps=1", f"train.lr={LR}",
        f"train.weight_decay={WEIGHT_DECAY}", "train.warmup_steps=0",
        "train.lr_schedule=constant", f"train.max_grad_norm={MAX_GRAD_NORM}",
        "train.eval_every=0", "train.eval_at_start=false", "train.eval_at_end=false",
        "train.checkpoint_every=0", "train.cpu=true"]
    if not case.startswith("moe"):  # the same model code as TRL: transformers' forward everywhere
        overrides += ["train.efficient_moe=false"]
    if case == "same-unfused":
        overrides += ["loss.fused=off"]
    shutil.rmtree(out, ignore_errors=True)  # a fresh run each repeat
    recipe = load_recipe(None, overrides)
    started = time.perf_counter()
    run(recipe)
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in rows if "loss" in r and "val_loss" not in r and r["step"] > 0}
    losses = [steps[s]["loss"] for s in range(1, args.steps + 1)]
    seconds = steps[args.steps]["elapsed_s"] - steps[args.skip]["elapsed_s"]
    return {"losses": losses, "steady_s": seconds, "wall_s": wall}


def worker_trl(work: Path, case: str, args) -> dict:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError as exc:
        raise SystemExit(f"vs_trl.py needs trl==1.16.0 (a benchmark-only dependency: "
                         f"pip install -e .[bench]): {exc}")
    import torch
    import torch.nn.functional as F
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback

    torch.manual_seed(SEED)
    student = AutoModelForCausalLM.from_pretrained(
        work / "models" / _student_dir(case), dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(work / "models" / _teacher_dir(case),
                                                   dtype=torch.float32)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(work / "models" / "teacher")
    # Whole blocks (seq + 1 tokens) as input and labels: GKD shifts by one inside, so its
    # targets are exactly distill's (the extra last position's logits are dropped).
    blocks = torch.load(work / "blocks.pt")
    dataset = Dataset.from_dict({"input_ids": blocks.tolist(),
                                 "attention_mask": torch.ones_like(blocks).tolist(),
                                 "labels": blocks.tolist()})
    collate = lambda rows: {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}  # noqa: E731
    losses: list[torch.Tensor] = []
    marks: list[float] = []

    class Marks(TrainerCallback):
        def on_step_end(self, *_, **__):
            marks.append(time.perf_counter())

    class GKDWithCE(GKDTrainer):
        """GKD's forward KL (beta 0) plus the hard-label CE, 0.5 each: distill's objective."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            self.teacher_model.eval()
            with torch.no_grad():
                teacher_out = self.teacher_model(input_ids=inputs["input_ids"],
                                                 attention_mask=inputs["attention_mask"])
            logits, labels = out.logits[:, :-1, :], inputs["labels"][:, 1:]
            kd = self.generalized_jsd_loss(logits, teacher_out.logits[:, :-1, :], labels,
                                           beta=0.0, num_items_in_batch=num_items_in_batch)
            ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                 ignore_index=-100, reduction="sum") / num_items_in_batch
            loss = 0.5 * ce + 0.5 * kd
            losses.append(loss.detach())
            return (loss, out) if return_outputs else loss

        def _get_train_sampler(self, *_, **__):  # distill's order, written out by prepare
            return SequentialSampler(self.train_dataset)

    config = GKDConfig(
        output_dir=str(work / f"trl-{case}"), lmbda=0.0, beta=0.0, temperature=1.0,
        seq_kd=False, max_steps=args.steps, per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1, learning_rate=LR, weight_decay=WEIGHT_DECAY,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch",
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=MAX_GRAD_NORM,
        use_cpu=True, bf16=False, fp16=False, report_to=[], save_strategy="no",
        eval_strategy="no", logging_strategy="no", disable_tqdm=True, seed=SEED,
        dataloader_num_workers=0, dataloader_pin_memory=False, max_length=args.seq + 1,
        disable_dropout=True)
    trainer = GKDWithCE(model=student, teacher_model=teacher, args=config,
                        data_collator=collate, train_dataset=dataset,
                        processing_class=tokenizer, callbacks=[Marks()])
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    return {"losses": [float(v) for v in losses], "wall_s": wall,
            "steady_s": marks[args.steps - 1] - marks[args.skip - 1]}


def _spawn(work: Path, framework: str, case: str, args) -> dict:
    result = work / f"{framework}-{case}.json"
    log = work / f"{framework}-{case}.log"
    cmd = [sys.executable, __file__, "--worker", framework, "--case", case, "--work",
           str(work), "--steps", str(args.steps), "--skip", str(args.skip), "--batch",
           str(args.batch), "--seq", str(args.seq), "--max-chars", str(args.max_chars)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRL_EXPERIMENTAL_SILENCE": "1"}
    with open(log, "w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{framework} {case} failed (exit {done.returncode}); its output: "
                         f"{log}\n{log.read_text()[-3000:]}")
    return json.loads(result.read_text())


def _spread(values: list[float]) -> str:
    return (f"{statistics.median(values):8.1f} ({min(values):.1f}-{max(values):.1f})"
            if len(values) > 1 else f"{values[0]:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--skip", type=int, default=10,
                        help="steps left out of the steady-state window (warm-up)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--max-chars", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--worker", choices=("distill", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # one framework, one case, in this process; results to a json file
        import torch

        torch.set_num_threads(torch.get_num_threads())
        fn = worker_distill if args.worker == "distill" else worker_trl
        result = fn(args.work, args.case, args)
        result["peak_rss_mib"] = _peak_rss_mib()
        (args.work / f"{args.worker}-{args.case}.json").write_text(json.dumps(result))
        return

    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        raise SystemExit(f"--cases: unknown {sorted(unknown)}; allowed: {', '.join(CASES)}")
    import torch

    work = args.work or Path(tempfile.mkdtemp(prefix="vs_trl-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"vs_trl: preparing data and models under {work}", flush=True)
    prepare(work, args)
    tokens = args.batch * args.seq * (args.steps - args.skip)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; {args.steps} steps of {args.batch} x {args.seq} tokens, fp32, forward KL + "
          f"CE 0.5/0.5; steady state over steps {args.skip + 1}-{args.steps}; "
          f"median (min-max) of {args.repeats} interleaved repeats", flush=True)
    for case in cases:
        runs: dict[str, list[dict]] = {"distill": [], "trl": []}
        for repeat in range(args.repeats):
            for framework in (("distill", "trl") if repeat % 2 == 0 else ("trl", "distill")):
                runs[framework].append(_spawn(work, framework, case, args))
                print(f"  {case} {framework} repeat {repeat + 1}: "
                      f"{tokens / runs[framework][-1]['steady_s']:.0f} tok/s", flush=True)
        diff = max(abs(a - b) for d, t in zip(runs["distill"], runs["trl"])
                   for a, b in zip(d["losses"], t["losses"]))
        stats = {fw: {"tok_s": [tokens / r["steady_s"] for r in rs],
                      "wall": [r["wall_s"] for r in rs],
                      "rss": [r["peak_rss_mib"] for r in rs]} for fw, rs in runs.items()}
        ratios = {k: [d / t for d, t in zip(stats["distill"][k], stats["trl"][k])]
                  for k in ("tok_s", "wall", "rss")}
        print(f"\n{case}: per-step loss, max |distill - TRL| over {args.steps} steps: {diff:.2e}"
              f" (first step {runs['distill'][0]['losses'][0]:.4f} vs "
              f"{runs['trl'][0]['losses'][0]:.4f})")
        print(f"{'':10}{'tokens/s':>22}{'wall s':>22}{'peak RSS MiB':>24}")
        for fw in ("distill", "trl"):
            s = stats[fw]
            print(f"{fw:10}{_spread(s['tok_s']):>22}{_spread(s['wall']):>22}"
                  f"{_spread(s['rss']):>24}")
        print(f"{'ratio':10}" + "".join(
            f"{statistics.median(ratios[k]):>14.2f}x ({min(ratios[k]):.2f}-{max(ratios[k]):.2f})"
            for k in ("tok_s", "wall", "rss")), flush=True)


if __name__ == "__main__":
    main()
