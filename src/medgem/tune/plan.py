"""Everything `medgem tune` checks before it loads a weight: settings, data, model fit, memory.

Bad data, a text-only model given images, QLoRA without a GPU, or a run that will not fit in
memory each fail here with one clear error, seconds in, not after minutes of loading.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medgem.errors import InputError, ResourceError, UnsupportedInputError
from medgem.resolve import Checkpoint
from medgem.tune.data import Example, TuneData, load_examples, split_examples


@dataclass(frozen=True)
class LoraSettings:
    """The adapter's shape; defaults are the official fine-tuning notebook's.

    Attributes:
        r, alpha, dropout: LoRA rank, scale numerator and dropout.
        targets: PEFT target_modules ("all-linear": every linear layer but the output head).
        save_embeddings: also train and save lm_head and embed_tokens whole (kept tied), as the
            notebook does. Off gives a pure LoRA adapter, which llama.cpp can apply directly.
    """

    r: int = 16
    alpha: int = 16
    dropout: float = 0.05
    targets: str = "all-linear"
    save_embeddings: bool = True


@dataclass(frozen=True)
class TuneConfig:
    """One fine-tuning run, as the CLI (or a script) describes it.

    Attributes:
        data: a dataset `medgem eval` reads, or JSONL rows of {"messages": [...]}.
        model: checkpoint folder, variant key or hub id (transformers format).
        out: the run folder: checkpoints/, then adapter/ when finished.
        task: "auto", "chat" or an evaluation task.
        validation_data: held-out rows from a separate file (else ``validation`` of ``data``).
        validation: the fraction of ``data`` held out (seeded).
        epochs, max_steps: training length (max_steps wins when given).
        batch_size, grad_accum: examples per step = batch_size * grad_accum.
        learning_rate, max_grad_norm, warmup: the notebook's 2e-4, 0.3 and 3%.
        quantize: "4bit" for QLoRA (NF4, double quantization, bf16 compute; CUDA only).
        save_steps: write a checkpoint every this many steps (what --resume continues from).
        merge: also write a merged checkpoint (out/merged).
        evaluate: end with the base-vs-tuned comparison on the held-out rows.
        eval_max_new_tokens: answer budget there (default: the longest held-out answer + 8).
        check_memory: refuse a run predicted not to fit.
        audit: where the closing evaluation's answers are recorded (as ``MedGemma.load``).
    """

    data: str
    model: str
    out: Path
    task: str = "auto"
    split: str | None = None
    validation_data: str | None = None
    validation: float = 0.1
    image_root: Path | None = None
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 4
    grad_accum: int = 4
    learning_rate: float = 2e-4
    max_grad_norm: float = 0.3
    warmup: float = 0.03
    lora: LoraSettings = field(default_factory=LoraSettings)
    quantize: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    save_steps: int = 50
    gradient_checkpointing: bool = False
    name: str | None = None
    merge: bool = False
    evaluate: bool = True
    eval_max_new_tokens: int | None = None
    check_memory: bool = True
    progress: bool = True
    audit: str | bool = True

    def settings(self) -> dict[str, Any]:
        """What must match for --resume to continue the same run."""
        keys = ("task", "split", "validation", "batch_size", "grad_accum", "learning_rate",
                "max_grad_norm", "warmup", "quantize", "seed", "epochs", "max_steps")
        return {k: getattr(self, k) for k in keys} | {"lora": asdict(self.lora)}


@dataclass(frozen=True)
class TunePlan:
    """A checked run: data split, checkpoint, placement, length."""

    config: TuneConfig
    checkpoint: Checkpoint
    data: TuneData
    device: str
    dtype: Any
    steps: int
    fingerprint: str


def plan_tuning(config: TuneConfig) -> TunePlan:
    """Read and split the data, resolve the model, and check that the run can go ahead.

    Raises:
        DatasetError: unreadable data, a bad row or a missing image (file and row named).
        UnsupportedInputError: images for a text-only model.
        EngineUnavailableError: --quantize without a CUDA GPU (or without bitsandbytes).
        ResourceError: the run is predicted not to fit in memory.
        InputError: a bad setting.
    """
    from medgem.engines.placement import placement, quantization_config
    from medgem.resolve import resolve_checkpoint

    for name, value in (("--batch-size", config.batch_size), ("--grad-accum", config.grad_accum),
                        ("--save-steps", config.save_steps), ("--lora-r", config.lora.r)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    if config.quantize not in (None, "4bit"):
        raise InputError(f"--quantize {config.quantize} is not a training mode",
                         "QLoRA trains on 4-bit weights: --quantize 4bit (CUDA only)")
    task, examples, _ = load_examples(config.data, config.task, split=config.split,
                                      image_root=config.image_root)
    if config.validation_data:
        _, held, _ = load_examples(config.validation_data, task, image_root=config.image_root)
        train = examples
    else:
        train, held = split_examples(examples, config.validation, config.seed)
    data = TuneData(task, train, held)
    checkpoint = resolve_checkpoint(config.model)
    if checkpoint.format != "hf":
        raise InputError(f"'{checkpoint.path.name}' is a GGUF file; training needs the "
                         "transformers checkpoint", "give the checkpoint folder or hub id")
    first = next((e for e in [*train, *held] if e.images), None)
    if first is not None and not checkpoint.multimodal:
        raise UnsupportedInputError(
            f"'{checkpoint.model_id}' is a text-only model but {first.where} has images",
            "train an image model (such as 4b-it) on image data, or use text-only rows",
        )
    device, dtype = placement(config.device, config.dtype, checkpoint)
    if config.quantize:
        quantization_config(config.quantize, device)  # refuses CPUs and a missing bitsandbytes
    per_step = config.batch_size * config.grad_accum
    steps = config.max_steps or max(1, math.ceil(len(train) * config.epochs / per_step))
    plan = TunePlan(config, checkpoint, data, device, dtype, steps, _fingerprint(train, held))
    if config.check_memory:
        check_training_fits(plan)
    return plan


def _fingerprint(train: list[Example], held: list[Example]) -> str:
    digest = hashlib.sha256()
    for part, examples in (("train", train), ("validation", held)):
        for example in examples:
            turns = [[t.role, [p if isinstance(p, str) else str(p) if isinstance(p, Path)
                               else hashlib.sha256(p).hexdigest() for p in t.parts]]
                     for t in example.turns]
            digest.update(json.dumps([part, example.id, turns]).encode())
    return digest.hexdigest()[:16]


# --- memory ------------------------------------------------------------------------------------


def lora_parameters(config: dict[str, Any], r: int) -> int:
    """LoRA parameters over every linear layer: r * (in + out) each (text and vision towers)."""
    text = config.get("text_config", config)
    hidden, inter = int(text["hidden_size"]), int(text["intermediate_size"])
    heads, kv = int(text["num_attention_heads"]), int(text.get("num_key_value_heads", 1))
    head_dim = int(text.get("head_dim") or hidden // heads)
    per_layer = (hidden + heads * head_dim) * 2 + (hidden + kv * head_dim) * 2 + 3 * (hidden + inter)
    total = per_layer * int(text["num_hidden_layers"])
    vision = config.get("vision_config")
    if vision:
        v_hidden, v_inter = int(vision["hidden_size"]), int(vision["intermediate_size"])
        total += (4 * 2 * v_hidden + 2 * (v_hidden + v_inter)) * int(vision["num_hidden_layers"])
    return r * total


def training_bytes(plan: TunePlan, sequence: int) -> int:
    """Predicted peak memory of one training step.

    Weights at their precision; the trainable copies (LoRA, and the notebook's embedding when
    saved) with fp32 gradients and two Adam moments; the logits over the whole vocabulary
    (fp32, with their softmax and gradient) for a batch; per-layer activations; the runtime.
    """
    from medgem.memory import BYTES_PER_PARAM, OVERHEAD_BYTES, count_parameters

    config = json.loads((plan.checkpoint.path / "config.json").read_text())
    text = config.get("text_config", config)
    vocab, hidden = int(text["vocab_size"]), int(text["hidden_size"])
    layers = int(text["num_hidden_layers"])
    precision = plan.config.quantize or str(plan.dtype).removeprefix("torch.")
    weights = count_parameters(plan.checkpoint.path) * BYTES_PER_PARAM[precision]
    trainable = lora_parameters(config, plan.config.lora.r)
    if plan.config.lora.save_embeddings:
        trainable += vocab * hidden
    tokens = plan.config.batch_size * sequence
    logits = tokens * vocab * 4 * 3
    activations = tokens * hidden * layers * 4 * (4 if plan.config.gradient_checkpointing else 24)
    return int(weights + trainable * 16 + logits + activations + OVERHEAD_BYTES)


def estimate_sequence(data: TuneData) -> int:
    """A token length for the estimate before the tokenizer is loaded: characters / 3, plus
    256 tokens per image (MedGemma's image size), over the longest training example."""
    longest = 0
    for example in data.train:
        chars = sum(len(p) for t in example.turns for p in t.parts if isinstance(p, str))
        longest = max(longest, chars // 3 + 16 + 256 * len(example.images))
    return longest


def check_training_fits(plan: TunePlan) -> int:
    """Refuse a run that will not fit, naming settings that would.

    Returns:
        The predicted peak bytes.

    Raises:
        ResourceError: with the need, the budget and what to change.
    """
    from medgem.hardware import GIB, detect_hardware
    from medgem.memory import budget_for

    sequence = estimate_sequence(plan.data)
    need = training_bytes(plan, sequence)
    what, budget = budget_for(detect_hardware(), plan.device)
    if need <= budget:
        return need
    hints = []
    if plan.config.batch_size > 1:
        hints.append("a smaller --batch-size (raise --grad-accum to keep the step size)")
    if plan.config.lora.save_embeddings:
        hints.append("--no-save-embeddings")
    if plan.device.startswith("cuda") and not plan.config.quantize:
        hints.append("--quantize 4bit (QLoRA)")
    if not plan.config.gradient_checkpointing:
        hints.append("--gradient-checkpointing")
    hints.append("a machine with more memory")
    raise ResourceError(
        f"training {plan.checkpoint.model_id} needs about {need / GIB:.1f} GiB "
        f"(batch {plan.config.batch_size} of ~{sequence} tokens) but {what} is "
        f"{budget / GIB:.1f} GiB",
        "try " + ", or ".join(hints),
    )
