"""The training loop in plain torch (DeepSpeed optional), runnable without Ray.

Why separate from ``train.py``: the loop is what must be right (accumulation, clipping,
schedule, validation, checkpoint contents, resume position), and tests drive it directly
with in-memory batches; Ray Train only supplies the data shard, the process group and
``report``.

A checkpoint directory holds ``model/`` (an av_model checkpoint, rank 0), ``state/``
(optimizer, scheduler, trainable weights: DeepSpeed's per-rank files or ``torch.pt``),
``rng/rank<R>.pt`` (each rank's torch RNG: dropout) and ``loop.json`` (step, epoch,
batches consumed in the epoch) so a resumed run continues from the exact data position with
the same random draws and ends at exactly ``optim.max_steps``. The collator's draws need no
state: they are a function of the batch (``train_data.Collator``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.distributed as dist

from av_model import checkpoint as av_checkpoint
from av_model.model import AVModel, GenerateOptions, Sample
from pipelines.train_config import OptimConfig, TrainConfig

log = logging.getLogger("avray.train")
MODEL_INPUTS = ("input_ids", "attention_mask", "labels", "video", "audio", "image")
Report = Callable[[dict[str, Any], str | None], None]


@dataclass
class LoopState:
    step: int = 0                # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0    # micro-batches consumed in the current epoch
    samples: int = 0


def lr_factor(cfg: OptimConfig) -> Callable[[int], float]:
    """Linear warm-up, then cosine down to ``min_lr_ratio`` at ``max_steps``."""
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def param_groups(model: AVModel, cfg: OptimConfig) -> list[dict[str, Any]]:
    """The trainable parameters as optimizer groups: the connector's at ``connector_lr``
    when set, the rest (LLM, LoRA, learned media embeddings) at ``lr``. The schedule scales
    every group by the same factor."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.connector_lr is None:
        return [{"params": [p for _, p in trainable]}]
    own = [p for n, p in trainable if n.startswith("connector.")]
    rest = [p for n, p in trainable if not n.startswith("connector.")]
    return [g for g in ({"params": rest}, {"params": own, "lr": cfg.connector_lr})
            if g["params"]]


def deepspeed_config(cfg: TrainConfig) -> dict[str, Any]:
    ds = cfg.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {"train_micro_batch_size_per_gpu": cfg.data.batch_size,
            "gradient_accumulation_steps": cfg.optim.grad_accum,
            "gradient_clipping": cfg.optim.grad_clip,
            "zero_optimization": zero,
            "zero_force_ds_cpu_optimizer": False,   # our torch AdamW, also with offload
            "bf16": {"enabled": ds.precision == "bf16"},
            "fp16": {"enabled": ds.precision == "fp16"},
            "steps_per_print": 10 ** 9, "wall_clock_breakdown": False}


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Engine:
    """One interface over a DeepSpeed engine or a plain optimizer with manual accumulation."""

    def __init__(self, model: AVModel, cfg: TrainConfig):
        self.cfg, self.model = cfg, model
        self.params = [p for p in model.parameters() if p.requires_grad]
        o = cfg.optim
        opt = torch.optim.AdamW(param_groups(model, o), lr=o.lr, betas=o.betas,
                                weight_decay=o.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(o))
        self.micro = 0
        if cfg.deepspeed.enabled:
            import deepspeed

            self.ds, self.opt, _, self.sched = deepspeed.initialize(
                model=model, optimizer=opt, lr_scheduler=sched,
                config=deepspeed_config(cfg), dist_init_required=None)
            self.module = self.ds
        else:
            self.ds, self.opt, self.sched, self.module = None, opt, sched, model
            if world()[1] > 1:
                self.module = torch.nn.parallel.DistributedDataParallel(model)
        self.grad_norm = 0.0

    def precision(self) -> contextlib.AbstractContextManager:
        """bf16 without DeepSpeed is autocast: fp32 weights and optimizer, bf16 matmuls
        (DeepSpeed's bf16 keeps the weights in bf16 and fp32 master copies itself)."""
        if self.ds is not None or self.cfg.deepspeed.precision != "bf16":
            return contextlib.nullcontext()
        device = next(self.model.parameters()).device.type
        return torch.autocast(device_type=device, dtype=torch.bfloat16)

    def forward(self, batch: dict[str, Any]):
        with self.precision():
            return self.module(**{k: batch[k] for k in MODEL_INPUTS})

    def backward_step(self, loss: torch.Tensor) -> bool:
        """Backward one micro-batch; True when the optimizer stepped."""
        if self.ds is not None:
            self.ds.backward(loss)
            boundary = self.ds.is_gradient_accumulation_boundary()
            self.ds.step()
            if boundary:
                norm = self.ds.get_global_grad_norm()
                self.grad_norm = float(norm) if norm is not None else 0.0
            return boundary
        (loss / self.cfg.optim.grad_accum).backward()
        self.micro += 1
        if self.micro % self.cfg.optim.grad_accum:
            return False
        clip = self.cfg.optim.grad_clip or float("inf")
        self.grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return True

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def save_state(self, path: str) -> None:
        if self.ds is not None:
            self.ds.save_checkpoint(path, tag="state", exclude_frozen_parameters=True)
            return
        if world()[0] == 0:
            trainable = {n: p.detach().cpu() for n, p in self.model.named_parameters()
                         if p.requires_grad}
            torch.save({"trainable": trainable, "opt": self.opt.state_dict(),
                        "sched": self.sched.state_dict(), "micro": self.micro},
                       os.path.join(path, "torch.pt"))

    def load_state(self, path: str) -> None:
        if self.ds is not None:
            self.ds.load_checkpoint(path, tag="state", load_module_strict=False)
            return
        state = torch.load(os.path.join(path, "torch.pt"), map_location="cpu",
                           weights_only=False)
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                params[name].copy_(value)
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.micro = state["micro"]

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """Full trainable weights on every rank (ZeRO-3 partitions them) while saving."""
        if self.ds is None or self.cfg.deepspeed.zero_stage != 3:
            yield
            return
        import deepspeed

        params = [p for p in self.model.parameters()
                  if p.requires_grad or self.cfg.model.llm.mode == "full"]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield


def _all_reduce_sums(values: list[float]) -> list[float]:
    """Each value summed over every rank (one small collective; every rank must call it)."""
    if world()[1] == 1:
        return list(values)
    # NCCL reduces CUDA tensors only (a GPU job's process group has no CPU backend).
    device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(x) for x in t]


def _all_reduce_means(totals: list[float], count: int) -> list[float]:
    """Sums over every rank divided by the summed count."""
    *sums, n = _all_reduce_sums([*totals, float(count)])
    return [x / max(n, 1.0) for x in sums]


class Trainer:
    """Runs optimizer steps until ``optim.max_steps``; validates, checkpoints, reports."""

    def __init__(self, model: AVModel, cfg: TrainConfig, report: Report):
        self.model, self.cfg, self.report = model, cfg, report
        self.engine = Engine(model, cfg)
        self.rank, self.world = world()

    def resume(self, path: str) -> LoopState:
        """Restore weights, optimizer, scheduler, random state and the data position."""
        self.engine.load_state(os.path.join(path, "state"))
        self._load_rng(path)
        with open(os.path.join(path, "loop.json")) as f:
            state = LoopState(**json.load(f))
        log.info("resumed at step %d (epoch %d, batch %d)", state.step, state.epoch,
                 state.batches_in_epoch)
        return state

    def _rng_file(self, path: str) -> str:
        return os.path.join(path, "rng", f"rank{self.rank}.pt")

    def _save_rng(self, path: str) -> None:
        os.makedirs(os.path.join(path, "rng"), exist_ok=True)
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
        torch.save(state, self._rng_file(path))

    def _load_rng(self, path: str) -> None:
        file = self._rng_file(path)
        if not os.path.exists(file):
            # A checkpoint from before rng/ existed, or from fewer ranks than this run.
            log.warning("no random state for rank %d in %s: the resumed run's random draws "
                        "differ from an uninterrupted run's", self.rank, path)
            return
        state = torch.load(file, map_location="cpu", weights_only=False)
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])

    def validate(self, batches: Iterable[dict[str, Any]] | None) -> dict[str, Any]:
        """Mean validation loss over ``run.val_batches`` batches, and a few answers."""
        if batches is None:
            return {}
        self.model.eval()
        total, count, answers = 0.0, 0, []
        with torch.no_grad():
            for i, batch in enumerate(batches):
                if self.cfg.run.val_batches and i >= self.cfg.run.val_batches:
                    break
                with self.engine.precision():
                    out = self.model(**{k: batch[k] for k in MODEL_INPUTS})
                total, count = total + float(out.ce) * batch["num_samples"], count + batch["num_samples"]
                if i == 0 and self.cfg.run.generate_samples:
                    answers = self._answers(batch)
        self.model.train()
        loss_sum, n = _all_reduce_sums([total, float(count)])
        if n == 0:
            # A val_loss of 0.0 would rank this checkpoint best (run.keep_best).
            raise RuntimeError(f"validation saw no supervised sample on any worker: the "
                               f"{self.cfg.data.val_split!r} rows have no conversations or "
                               f"captions to score (data.val_split)")
        return {"val_loss": loss_sum / n, "answers": answers}

    def _answers(self, batch: dict[str, Any]) -> list[dict[str, str]]:
        n = min(self.cfg.run.generate_samples, len(batch["samples"]))
        prompts, refs = [], []
        for s in batch["samples"][:n]:
            last = max(i for i, t in enumerate(s.turns) if t["role"] == "assistant")
            prompts.append(Sample(s.turns[:last], s.video, s.audio, s.image))
            refs.append(s.turns[last]["content"])
        sync = self.engine.ds is not None and self.cfg.deepspeed.zero_stage == 3
        got = self.model.generate(prompts, GenerateOptions(max_new_tokens=32, synced_gpus=sync))
        return [{"prompt": p.turns[-1]["content"], "reference": r, "generated": g}
                for p, r, g in zip(prompts, refs, got)]

    def save(self, path: str, state: LoopState) -> None:
        os.makedirs(os.path.join(path, "state"), exist_ok=True)
        self.engine.save_state(os.path.join(path, "state"))
        self._save_rng(path)
        with self.engine.gathered():
            if self.rank == 0:
                av_checkpoint.save(self.model, os.path.join(path, "model"))
        if self.rank == 0:
            with open(os.path.join(path, "loop.json"), "w") as f:
                json.dump(asdict(state), f)

    def fit(self, epochs: Callable[[int, int], Iterable[dict[str, Any]]],
            val: Callable[[], Iterable[dict[str, Any]]] | None, state: LoopState,
            checkpoint_dir: Callable[[int], str]) -> LoopState:
        """``epochs(epoch, skip)`` yields collated micro-batches, skipping ``skip`` of them."""
        run, max_steps = self.cfg.run, self.cfg.optim.max_steps
        self.model.train()
        window = {"start": time.perf_counter(), "wait": 0.0, "samples": 0, "tokens": 0}
        losses = _StepLosses()
        while state.step < max_steps:
            batches = iter(epochs(state.epoch, state.batches_in_epoch))
            seen = 0
            while state.step < max_steps:
                t0 = time.perf_counter()
                batch = next(batches, None)
                window["wait"] += time.perf_counter() - t0
                if batch is None:
                    if seen == 0 and state.batches_in_epoch == 0:
                        raise RuntimeError("the training split yielded no batch (no rows of "
                                           "data.train_split on this worker?)")
                    state.epoch, state.batches_in_epoch = state.epoch + 1, 0
                    break
                seen += 1
                out = self.engine.forward(batch)
                losses.add(out)
                stepped = self.engine.backward_step(out.loss)
                state.batches_in_epoch += 1
                state.samples += batch["num_samples"] * self.world
                window["samples"] += batch["num_samples"] * self.world
                window["tokens"] += batch["num_tokens"] * self.world
                if not stepped:
                    continue
                state.step += 1
                metrics = {"step": state.step, **losses.pop(), **self._step_metrics(window)}
                last = state.step == max_steps
                if last or state.step % run.checkpoint_every == 0 or (
                        run.val_every and state.step % run.val_every == 0):
                    metrics.update(self.validate(val() if val else None))
                if last or state.step % run.checkpoint_every == 0:
                    path = checkpoint_dir(state.step)
                    self.save(path, state)
                    self.report(metrics, path)
                else:
                    self.report(metrics, None)
                # Validation, checkpoints and reporting are not part of the next step's time.
                window = {"start": time.perf_counter(), "wait": 0.0, "samples": 0, "tokens": 0}
        return state

    def _step_metrics(self, window: dict[str, float]) -> dict[str, Any]:
        elapsed = max(time.perf_counter() - window["start"], 1e-9)
        return {"lr": self.engine.lr, "grad_norm": self.engine.grad_norm,
                "samples_per_s": window["samples"] / elapsed,
                "tokens_per_s": window["tokens"] / elapsed,
                "data_wait_fraction": window["wait"] / elapsed}


class _StepLosses:
    """An optimizer step's loss: the mean over its micro-batches and every rank, not rank
    0's last micro-batch; with the diversity loss on, its weighted term (``diversity_loss``)
    beside the total. Summed on the device, read once a step (one sync, one collective)."""

    def __init__(self) -> None:
        self.loss, self.aux, self.count = None, None, 0

    def add(self, out) -> None:
        loss, aux = out.loss.detach().float(), out.aux.detach().float()
        self.loss = loss if self.loss is None else self.loss + loss
        self.aux = aux if self.aux is None else self.aux + aux
        self.count += 1

    def pop(self) -> dict[str, float]:
        loss, aux = _all_reduce_means([float(self.loss), float(self.aux)], self.count)
        self.loss, self.aux, self.count = None, None, 0
        return {"loss": loss, **({"diversity_loss": aux} if aux else {})}

