"""The training loop without Ray: learning, DeepSpeed parity, exact resume, collator rules."""

import os

import numpy as np
import pytest
import torch

from av_model.model import AVModel, GenerateOptions, Sample
from pipelines.train_config import DataConfig
from pipelines.train_data import Collator, iterate_rows, row_epochs
from pipelines.train_loop import LoopState, Trainer, lr_factor
from tests.pipelines.train_helpers import (COLOURS, colour_rows, single_process_dist_env,
                                           train_config)


def _run(cfg, rows, tmp_path, state=None, resume_from=None, seed=0, shuffle_seed=None):
    torch.manual_seed(seed)
    model = AVModel.build(cfg.model, load_encoders=False)
    reports = []
    trainer = Trainer(model, cfg, lambda m, p: reports.append((m, p)))
    if resume_from:
        state = trainer.resume(resume_from)
    collator = Collator(model, cfg.data, seed=cfg.optim.seed)
    epochs = row_epochs(rows, collator, cfg.data.batch_size, shuffle_seed=shuffle_seed)
    state = trainer.fit(epochs, None, state or LoopState(),
                        lambda step: str(tmp_path / f"step{step}"))
    return model, reports, state


def test_tiny_model_learns_the_colours(tiny_encoders, tmp_path):
    cfg = train_config(tiny_encoders, "full", optim={"max_steps": 80})
    rows = colour_rows()
    model, reports, state = _run(cfg, rows, tmp_path)
    losses = [m["loss"] for m, _ in reports]
    assert state.step == 80 and len(reports) == 80
    assert np.mean(losses[-5:]) < 0.25 * np.mean(losses[:5])
    prompts = [Sample(r["conversations"][:1], torch.from_numpy(r["video"]),
                      torch.from_numpy(r["audio"])) for r in rows[:8]]
    answers = model.generate(prompts, GenerateOptions(max_new_tokens=4))
    assert answers == [COLOURS[i % 4] for i in range(8)]
    assert set(reports[-1][0]) >= {"loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s",
                                   "data_wait_fraction"}
    assert reports[-1][1] == str(tmp_path / "step80")                # the final checkpoint
    assert sorted(os.listdir(reports[-1][1])) == ["loop.json", "model", "rng", "state"]


@pytest.mark.parametrize("deepspeed", [False, True])
def test_resume_gives_the_same_weights_as_a_straight_run(tiny_encoders, tmp_path, deepspeed):
    """Resumed mid-epoch, with every source of randomness on: rows reshuffled per epoch,
    the collator's modality draws, LoRA dropout. The resumed run must draw what the straight
    run drew (the torch RNG from the checkpoint, the collator's draws from the batch)."""
    import dataclasses
    import json

    if deepspeed:
        single_process_dist_env(29517)
    sections = dict(optim={"max_steps": 10, "grad_accum": 2, "warmup_steps": 2},
                    data={"batch_size": 4, "joint": 0.5, "video_only": 0.25,
                          "audio_only": 0.25},
                    deepspeed={"enabled": deepspeed, "zero_stage": 2},
                    run={"checkpoint_every": 5})
    cfg = train_config(tiny_encoders, "lora", **sections)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, llm=dataclasses.replace(cfg.model.llm, lora_dropout=0.3)))
    rows = colour_rows(10)                       # batches of 4, 4, 2: step 5 is mid-epoch
    straight, _, _ = _run(cfg, rows, tmp_path / "a", shuffle_seed=7)
    _, reports, _ = _run(cfg, rows, tmp_path / "b", shuffle_seed=7)
    ckpt5 = reports[4][1]
    assert ckpt5 and ckpt5.endswith("step5")
    with open(os.path.join(ckpt5, "loop.json")) as f:
        assert json.load(f) == {"step": 5, "epoch": 3, "batches_in_epoch": 1, "samples": 34}
    resumed, _, final = _run(cfg, rows, tmp_path / "c", resume_from=ckpt5, seed=123,
                             shuffle_seed=7)
    assert final.step == 10
    want = {n: p for n, p in straight.named_parameters() if p.requires_grad}
    for name, p in resumed.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, want[name], atol=1e-5, rtol=1e-4, msg=name)


def test_lr_schedule_warms_up_then_decays_to_the_floor(tiny_encoders):
    cfg = train_config(tiny_encoders, optim={"max_steps": 10, "warmup_steps": 2,
                                             "min_lr_ratio": 0.1}).optim
    f = lr_factor(cfg)
    assert [round(f(s), 3) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert f(10) == pytest.approx(0.1) and f(6) < f(3)


def test_collator_modality_mix_unpaired_audio_and_unsupervised_rows(tiny_encoders):
    cfg = train_config(tiny_encoders)
    model = AVModel.build(cfg.model, load_encoders=False)
    rows = colour_rows(40)
    mixed = Collator(model, DataConfig(features="x", joint=0.5, video_only=0.25,
                                       audio_only=0.25), seed=0)
    samples = mixed.samples(next(iterate_rows(rows, 40)))
    kinds = [(s.video is not None, s.audio is not None) for s in samples]
    assert {k: kinds.count(k) for k in set(kinds)}.keys() == {(True, True), (True, False),
                                                              (False, True)}
    # The configured proportions hold over many draws (1200 samples: 3 sd is about 0.04).
    many = []
    for epoch in range(30):
        mixed.set_epoch(epoch)
        many += [(s.video is not None, s.audio is not None)
                 for s in mixed.samples(next(iterate_rows(rows, 40)))]
    shares = [many.count(k) / len(many) for k in ((True, True), (True, False), (False, True))]
    assert shares == pytest.approx([0.5, 0.25, 0.25], abs=0.05)
    batch = mixed(next(iterate_rows(rows[:4], 4)))
    ids = batch["input_ids"]
    for i, s in enumerate(batch["samples"]):
        token = {(True, True): "<AUD_VIS>", (True, False): "<VIS>",
                 (False, True): "<AUD>"}[(s.video is not None, s.audio is not None)]
        assert token in model.tokenizer.decode(ids[i])
    silent = [dict(r, audio=np.zeros((0, 32), np.float16), conversations=None) for r in rows[:2]]
    donor = [dict(r, conversations=None) for r in rows[2:4]]
    unpaired = Collator(model, DataConfig(features="x", unpaired=1.0), seed=0)
    out = unpaired.samples(next(iterate_rows(silent + donor, 4)))
    assert all(s.audio is not None for s in out)
    answer = out[0].turns[-1]["content"]
    assert answer.startswith("a red screen a ") and answer.endswith(" screen")
    # unpaired_target=video: the borrowed audio, the clip's own caption as the target.
    keep = Collator(model, DataConfig(features="x", unpaired=1.0, unpaired_target="video"))
    out = keep.samples(next(iterate_rows(silent + donor, 4)))
    assert out[0].audio is not None and out[0].turns[-1]["content"] == "a red screen"
    bare = [dict(r, conversations=None, caption=None) for r in rows[:2]]
    empty = unpaired(next(iterate_rows(bare, 2)))
    assert empty["num_samples"] == 0 and (empty["labels"] == -100).all()
    assert model(**{k: empty[k] for k in ("input_ids", "attention_mask", "labels", "video",
                                          "audio", "image")}).loss.item() == 0.0


def test_collator_turns_one_trains_one_exchange_with_its_media(tiny_encoders):
    from pipelines.train_data import one_exchange

    convo = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": "<AUD_VIS>\nWhich appeared first, the red circle or "
                                         "the blue square?"},
             {"role": "assistant", "content": "the red circle"},
             {"role": "user", "content": "What colour is the circle?"},
             {"role": "assistant", "content": "red"},
             {"role": "user", "content": "Is the tone high or low?"},
             {"role": "assistant", "content": "low"}]
    rng = np.random.default_rng(0)
    picks = [one_exchange(convo, rng) for _ in range(60)]
    assert all(len(p) == 3 and p[0] == convo[0] and p[1]["role"] == "user" for p in picks)
    assert {p[2]["content"] for p in picks} == {"the red circle", "red", "low"}
    assert all(convo.index(p[2]) == convo.index(p[1]) + 1 for p in picks)  # its own answer
    assert one_exchange(convo[1:3], rng) == convo[1:3]

    cfg = train_config(tiny_encoders)
    model = AVModel.build(cfg.model, load_encoders=False)
    rows = [dict(r, conversations=convo[1:]) for r in colour_rows(8)]
    one = Collator(model, DataConfig(features="x", turns="one"), seed=0)
    batch = one(next(iterate_rows(rows, 8)))
    texts = [model.tokenizer.decode(ids) for ids in batch["input_ids"]]
    assert all(t.count("USER: <AUD_VIS>") == 1 and t.count("ASSISTANT:") == 1 for t in texts)
    assert len({s.turns[-1]["content"] for s in batch["samples"]}) > 1
    whole = Collator(model, DataConfig(features="x"), seed=0)(next(iterate_rows(rows, 8)))
    assert all(model.tokenizer.decode(ids).count("ASSISTANT:") == 3
               for ids in whole["input_ids"])


def test_collator_caption_mix_trains_captions_beside_conversations(tiny_encoders):
    cfg = train_config(tiny_encoders)
    model = AVModel.build(cfg.model, load_encoders=False)
    convo = [{"role": "user", "content": "<AUD_VIS>\nWhat colour is the circle?"},
             {"role": "assistant", "content": "red"}]
    rows = [dict(r, conversations=convo, caption="A red circle. A low tone.")
            for r in colour_rows(8)]
    answers = []
    mixed = Collator(model, DataConfig(features="x", turns="one", caption_mix=0.5), seed=0)
    for epoch in range(8):                     # draws are per batch and epoch
        mixed.set_epoch(epoch)
        batch = mixed(next(iterate_rows(rows, 8)))
        answers += [s.turns[-1]["content"] for s in batch["samples"]]
        prompts = {s.turns[0]["content"] for s in batch["samples"]}
        assert prompts <= {convo[0]["content"], DataConfig.caption_prompt}
    assert set(answers) == {"red", "A red circle. A low tone."}
    assert 0.3 < answers.count("red") / len(answers) < 0.7          # 64 samples at 0.5
    # Rows without a caption keep their conversation; 0 never trains a caption.
    bare = mixed(next(iterate_rows([dict(r, caption=None) for r in rows], 8)))
    assert {s.turns[-1]["content"] for s in bare["samples"]} == {"red"}
    never = Collator(model, DataConfig(features="x", turns="one"), seed=0)
    assert {s.turns[-1]["content"] for s in never(next(iterate_rows(rows, 8)))["samples"]} \
        == {"red"}


def test_connector_lr_gives_the_connector_its_own_group(tiny_encoders):
    from pipelines.train_loop import Engine, param_groups

    cfg = train_config(tiny_encoders, "lora", optim={"max_steps": 10, "warmup_steps": 2,
                                                     "lr": 1e-3, "connector_lr": 4e-3})
    torch.manual_seed(0)
    model = AVModel.build(cfg.model, load_encoders=False)
    engine = Engine(model, cfg)
    llm, conn = engine.opt.param_groups
    ids = {id(p) for p in conn["params"]}
    assert ids == {id(p) for p in model.connector.parameters() if p.requires_grad}
    assert not ids & {id(p) for p in llm["params"]} and len(llm["params"]) > 0
    # The schedule scales both groups alike: half of each base lr in the first warm-up step.
    assert (llm["lr"], conn["lr"]) == pytest.approx((0.5e-3, 2e-3))
    # Without the option, one group at lr; a frozen LLM leaves the connector's group alone.
    assert len(param_groups(model, train_config(tiny_encoders, "lora").optim)) == 1
    frozen = train_config(tiny_encoders, "frozen", optim={"connector_lr": 4e-3})
    [only] = param_groups(AVModel.build(frozen.model, load_encoders=False), frozen.optim)
    assert only["lr"] == 4e-3


@pytest.mark.parametrize("ds", [
    {"enabled": True, "zero_stage": 1},
    {"enabled": True, "zero_stage": 2, "offload_optimizer": True},
    {"enabled": True, "zero_stage": 3},
    {"enabled": True, "zero_stage": 2, "precision": "bf16"},
    {"enabled": False, "precision": "bf16"},
], ids=["zero1", "zero2-offload", "zero3-lora", "zero2-bf16", "torch-bf16-autocast"])
def test_deepspeed_stages_offload_and_bf16_train_and_save(tiny_encoders, tmp_path, ds):
    """Each DeepSpeed setting the config offers runs a few LoRA steps on CPU (gloo) and
    writes a checkpoint that loads with trained weights; bf16 really computes in bf16."""
    from av_model import checkpoint as av_checkpoint

    if ds["enabled"]:
        single_process_dist_env(29518)
    cfg = train_config(tiny_encoders, "lora", optim={"max_steps": 4, "lr": 5e-3,
                                                     "warmup_steps": 0},
                       deepspeed=ds, run={"checkpoint_every": 4})
    torch.manual_seed(0)
    init = {n: p.detach().clone() for n, p in
            AVModel.build(cfg.model, load_encoders=False).connector.named_parameters()}
    dtypes = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: dtypes.append(o.dtype)
        if isinstance(m, torch.nn.Linear) and isinstance(o, torch.Tensor) else None)
    try:
        _, reports, state = _run(cfg, colour_rows(8), tmp_path)
    finally:
        hook.remove()
    assert state.step == 4 and all(np.isfinite(m["loss"]) for m, _ in reports)
    want = torch.bfloat16 if ds.get("precision") == "bf16" else torch.float32
    assert set(dtypes) == {want}
    saved = av_checkpoint.load(os.path.join(reports[-1][1], "model"), load_encoders=False)
    moved = [n for n, p in saved.connector.named_parameters()
             if not torch.equal(p.float(), init[n])]
    assert moved and all(torch.isfinite(p).all() for p in saved.parameters())


def test_step_loss_is_the_mean_of_its_micro_batches_with_the_diversity_term(tiny_encoders,
                                                                            tmp_path):
    """The logged loss of a step is the mean over its micro-batches (not the last one's),
    and with the diversity loss on, its weighted term is logged beside it."""
    import dataclasses

    cfg = train_config(tiny_encoders, "lora", optim={"max_steps": 2, "grad_accum": 3},
                       data={"batch_size": 2})
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, connector=dataclasses.replace(cfg.model.connector, diversity_weight=0.5)))
    torch.manual_seed(0)
    model = AVModel.build(cfg.model, load_encoders=False)
    reports = []
    trainer = Trainer(model, cfg, lambda m, p: reports.append(m))
    seen = []
    forward = trainer.engine.forward

    def recording(batch):
        out = forward(batch)
        seen.append((float(out.loss), float(out.aux)))
        return out

    trainer.engine.forward = recording
    trainer.fit(row_epochs(colour_rows(12), Collator(model, cfg.data), 2), None, LoopState(),
                lambda step: str(tmp_path / f"step{step}"))
    assert len(seen) == 6 and len({round(loss, 6) for loss, _ in seen}) > 1
    for report, micro in zip(reports, (seen[:3], seen[3:])):
        assert report["loss"] == pytest.approx(np.mean([loss for loss, _ in micro]))
        assert report["diversity_loss"] == pytest.approx(np.mean([aux for _, aux in micro]))
        assert report["diversity_loss"] != 0                 # cosines: either sign


def test_validation_without_a_supervised_sample_refuses_to_report_zero(tiny_encoders):
    """Rows with nothing to score give no validation loss, not 0.0 (which would rank the
    checkpoint best)."""
    cfg = train_config(tiny_encoders, "lora")
    model = AVModel.build(cfg.model, load_encoders=False)
    trainer = Trainer(model, cfg, lambda m, p: None)
    bare = [dict(r, conversations=None, caption=None) for r in colour_rows(4)]
    with pytest.raises(RuntimeError, match="data.val_split"):
        trainer.validate(row_epochs(bare, Collator(model, cfg.data), 4)(0, 0))
    scored = trainer.validate(row_epochs(colour_rows(4), Collator(model, cfg.data), 4)(0, 0))
    assert scored["val_loss"] > 0
