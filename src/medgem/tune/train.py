"""LoRA / QLoRA training with PEFT and transformers' Trainer, resumable and sealed when done.

No hand-written loop: transformers' Trainer runs it. Trainer rather than TRL's SFTTrainer (trl
1.x): with the notebook's own collate function the notebook itself has to switch SFTTrainer's
dataset preparation off (``dataset_kwargs={"skip_prepare_dataset": True}``,
``remove_unused_columns=False``), and what is left of SFTTrainer is Trainer's loop plus a
dependency. Trainer brings seeding, gradient accumulation, checkpoints that hold the optimizer,
scheduler and RNG state, and a resume that skips the batches already trained on; the one
addition here is a callback for the progress bar (loss and tokens/s). The rows are not a
``datasets.Dataset``: they are read by the evaluation harness's own reader (the same formats,
errors naming file and row, images through medgem's inputs door), and Trainer takes any sized
sequence, so converting them would add a copy and nothing else.

The run folder: ``tune.json`` (what is being trained, so a resume continues the same run),
``checkpoints/checkpoint-N`` (every ``save_steps``), and, only when training has finished,
``adapter/`` (renamed into place from ``adapter.partial`` after its content hash is written).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medgem.adapters import PARTIAL_SUFFIX, AdapterInfo, find_adapter, write_marker
from medgem.errors import InputError, MissingDependencyError
from medgem.evaluate.results import write_json
from medgem.tune.collate import ChatCollator
from medgem.tune.plan import TunePlan

STATE_FILE = "tune.json"
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"


@dataclass(frozen=True)
class TrainOutcome:
    """What training produced.

    Attributes:
        adapter: the sealed adapter.
        steps: optimizer steps in total; resumed_from: the checkpoint step it continued from.
        loss_before, loss_after: validation loss of the base model and of the tuned one.
        seconds: training time in this process; tokens_per_s: training tokens per second.
    """

    adapter: AdapterInfo
    steps: int
    resumed_from: int
    loss_before: float
    loss_after: float
    seconds: float
    tokens_per_s: float


def load_for_training(plan: TunePlan) -> tuple[Any, Any]:
    """(model, processor-or-tokenizer) placed and typed for training, gradient-ready."""
    import transformers

    from medgem.engines.placement import quantization_config
    from medgem.request.compose import shipped_chat_template

    # transformers draws its own "Loading weights" bar: only where medgem's bars are drawn
    logging = transformers.utils.logging
    (logging.enable_progress_bar if plan.config.progress else logging.disable_progress_bar)()
    path = str(plan.checkpoint.path)
    multimodal = plan.checkpoint.multimodal
    processor: Any = (transformers.AutoProcessor if multimodal
                      else transformers.AutoTokenizer).from_pretrained(path)
    if not getattr(processor, "chat_template", None):
        processor.chat_template = shipped_chat_template()
        if multimodal:
            processor.tokenizer.chat_template = processor.chat_template
    kwargs: dict[str, Any] = {"dtype": plan.dtype}
    quant = quantization_config(plan.config.quantize, plan.device)
    if quant is not None:
        kwargs |= {"quantization_config": quant, "device_map": {"": plan.device}}
    elif plan.device.startswith("cuda"):
        kwargs["device_map"] = plan.device
    model_class: Any = (transformers.AutoModelForImageTextToText if multimodal
                        else transformers.AutoModelForCausalLM)
    # eager attention: the notebook's choice for Gemma 3 training (sdpa mishandles its masks)
    model = model_class.from_pretrained(path, attn_implementation="eager", **kwargs)
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=plan.config.gradient_checkpointing)
    model.config.use_cache = False
    return model, processor


def lora_config(plan: TunePlan) -> Any:
    """PEFT's LoraConfig from the plan (the notebook's settings by default)."""
    from peft import LoraConfig

    lora = plan.config.lora
    return LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
        target_modules=lora.targets, task_type="CAUSAL_LM",
        modules_to_save=["lm_head", "embed_tokens"] if lora.save_embeddings else None,
        # one trained embedding for input and output, as Gemma ties them
        ensure_weight_tying=lora.save_embeddings,
    )


def train(plan: TunePlan, *, resume: bool = False,
          on_step: Callable[[int], None] | None = None) -> TrainOutcome:
    """Train the adapter, continuing from the last checkpoint with ``resume``.

    Args:
        plan: from :func:`medgem.tune.plan.plan_tuning`.
        resume: continue the run already in the out folder.
        on_step: called after each optimizer step with its number (tests interrupt runs here).

    Raises:
        InputError: the out folder holds a finished adapter, or a run without ``resume``, or
            a run with other data or settings.
        MissingDependencyError: peft is missing.
    """
    try:
        import peft
        import transformers
    except ImportError as exc:
        raise MissingDependencyError("peft", "tune", "medgem tune") from exc
    out = plan.config.out
    last = _check_out_folder(plan, resume)
    started = time.perf_counter()
    transformers.set_seed(plan.config.seed)
    model, processor = load_for_training(plan)
    model = peft.get_peft_model(model, lora_config(plan))
    if plan.config.gradient_checkpointing:
        model.enable_input_require_grads()
    collator = ChatCollator(processor, multimodal=plan.checkpoint.multimodal,
                            pixel_dtype=_pixel_dtype(model))
    progress = _progress_callback(plan.steps, plan.config.progress, on_step)
    trainer = transformers.Trainer(
        model=model, args=_arguments(plan), data_collator=collator,
        train_dataset=plan.data.train, eval_dataset=plan.data.validation, callbacks=[progress],
    )
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    state = json.loads((out / STATE_FILE).read_text())  # _check_out_folder wrote it
    if last is None:
        state["loss_before"] = float(trainer.evaluate()["eval_loss"])
        write_json(out / STATE_FILE, state)
    resumed_from = int(last.name.split("-")[-1]) if last is not None else 0
    trainer.train(resume_from_checkpoint=str(last) if last is not None else None)
    loss_after = float(trainer.evaluate()["eval_loss"])
    seconds = time.perf_counter() - started
    adapter = _seal(plan, model, processor, state, loss_after, trainer.state.global_step)
    return TrainOutcome(adapter, trainer.state.global_step, resumed_from, state["loss_before"],
                        loss_after, seconds, progress.tokens_per_s)


def _pixel_dtype(model: Any) -> Any:
    import torch

    for name, parameter in model.named_parameters():
        if "vision_tower" in name and parameter.dtype.is_floating_point:
            return parameter.dtype
    return torch.float32


def _arguments(plan: TunePlan) -> Any:
    import transformers

    config = plan.config
    on_gpu = plan.device.startswith("cuda")
    # transformers 5 renamed gradient checkpointing; pass it only when asked, under either name
    checkpointing: dict[str, Any] = {}
    if config.gradient_checkpointing:
        checkpointing = {"gradient_checkpointing": True,
                         "gradient_checkpointing_kwargs": {"use_reentrant": False}}
    return transformers.TrainingArguments(
        **checkpointing,
        output_dir=str(config.out / CHECKPOINTS),
        max_steps=plan.steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=config.warmup,
        max_grad_norm=config.max_grad_norm,
        optim="adamw_torch_fused" if on_gpu else "adamw_torch",
        bf16=on_gpu and str(plan.dtype) == "torch.bfloat16",
        use_cpu=not on_gpu,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=1,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        dataloader_pin_memory=on_gpu,
        include_num_input_tokens_seen="non_padding",
    )


def _check_out_folder(plan: TunePlan, resume: bool) -> Path | None:
    """The checkpoint to continue from (None for a fresh run); refuses what would mix runs."""
    out = plan.config.out
    if (out / ADAPTER).exists():
        raise InputError(f"{out} already holds a finished adapter",
                         "choose another --out, or remove that folder to train again")
    wanted = {"data_fingerprint": plan.fingerprint, "model": plan.checkpoint.model_id,
              "revision": plan.checkpoint.revision, "settings": plan.config.settings(),
              "steps": plan.steps}
    state_path = out / STATE_FILE
    last: Path | None = None
    if state_path.exists():
        if not resume:
            raise InputError(f"{out} already holds a training run",
                             "add --resume to continue it, or choose another --out")
        old = json.loads(state_path.read_text())
        diffs = [k for k in wanted if old.get(k) != wanted[k]]
        if diffs:
            raise InputError(f"{out} holds a run with different {', '.join(diffs)}",
                             "resume with the same data, model and settings, or choose another --out")
        last = _last_complete_checkpoint(out / CHECKPOINTS)
    shutil.rmtree(out / (ADAPTER + PARTIAL_SUFFIX), ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    if last is None:
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(state_path, wanted | {"started": started})
    return last


def _last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint Trainer finished writing; a torn one (Ctrl-C while it was saved:
    no trainer_state.json, which Trainer writes last) cannot be resumed from and is removed."""
    from transformers.trainer_utils import get_last_checkpoint

    while folder.is_dir() and (found := get_last_checkpoint(str(folder))):
        checkpoint = Path(found)
        if (checkpoint / "trainer_state.json").is_file():
            return checkpoint
        shutil.rmtree(checkpoint)
    return None


def _seal(plan: TunePlan, model: Any, processor: Any, state: dict[str, Any], loss_after: float,
          steps: int) -> AdapterInfo:
    """Save the adapter under a temporary name, write its hash, then rename it into place."""
    out = plan.config.out
    partial = out / (ADAPTER + PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(str(partial))
    name = plan.config.name or out.resolve().name
    write_marker(partial, name, {
        "base_model": {"id": plan.checkpoint.model_id, "revision": plan.checkpoint.revision,
                       "path": str(plan.checkpoint.path.resolve()),
                       "multimodal": plan.checkpoint.multimodal},
        "task": plan.data.task,
        "data_fingerprint": plan.fingerprint,
        "settings": plan.config.settings(),
        "steps": steps,
        "train_examples": len(plan.data.train),
        "validation_examples": len(plan.data.validation),
        "validation_loss": {"base": state.get("loss_before"), "tuned": loss_after},
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    partial.replace(out / ADAPTER)
    return find_adapter(out / ADAPTER)


def _progress_callback(total: int, enabled: bool, on_step: Callable[[int], None] | None) -> Any:
    """A TrainerCallback drawing a progress bar with the training loss and tokens/s, calling
    ``on_step`` after each optimizer step."""
    from tqdm import tqdm
    from transformers import TrainerCallback

    class Progress(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.bar: Any = None
            self.loss: float | None = None
            self.start = 0.0
            self.tokens0 = 0
            self.tokens_per_s = 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()
            self.tokens0 = int(state.num_input_tokens_seen or 0)
            self.bar = tqdm(total=total, initial=state.global_step, desc="tune", unit="step",
                            file=sys.stderr, disable=not enabled, dynamic_ncols=True)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **kwargs: Any) -> None:
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            self.tokens_per_s = (int(state.num_input_tokens_seen or 0) - self.tokens0) / elapsed
            if self.bar is not None:
                self.bar.update(1)
                postfix = {"tok/s": f"{self.tokens_per_s:.0f}"}
                if self.loss is not None:
                    postfix = {"loss": f"{self.loss:.3f}"} | postfix
                self.bar.set_postfix(postfix)
            if on_step is not None:
                on_step(int(state.global_step))

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None:
                self.bar.close()

    return Progress()
