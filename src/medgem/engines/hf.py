"""transformers engines: the direct path (processor + generate) and the pipeline path.

Both render the same chat template and decode greedily by default, so for the same request they
produce the same tokens (tested). Generation runs in a worker thread feeding a token streamer, so
both paths stream, count tokens exactly and stop when the caller cancels.
"""

from __future__ import annotations

import functools
import importlib.util
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

from medgem.adapters import attach_adapter, find_adapter
from medgem.engines import base
from medgem.engines.grammar import Grammars, GuidedRows
from medgem.engines.options import HFOptions, PipelineOptions
from medgem.engines.placement import placement, quantization_config
from medgem.errors import InputError, NotACheckpointError, require
from medgem.hardware import cpu_has_native_bf16, detect_hardware
from medgem.memory import check_fits, count_parameters
from medgem.request import Request
from medgem.request.compose import shipped_chat_template
from medgem.request.thinking import THOUGHT_CLOSE, THOUGHT_OPEN
from medgem.request.variants import GEMMA3_CONTEXT
from medgem.resolve import Checkpoint

Mode = Literal["direct", "pipeline"]


class HFEngine:
    """MedGemma on transformers (any Gemma 3 checkpoint, multimodal or text-only, pt or it):
    the direct path with ``HFOptions``, the pipeline path with ``PipelineOptions``."""

    def __init__(self, checkpoint: Checkpoint, options: HFOptions | PipelineOptions) -> None:
        if checkpoint.format != "hf":
            raise InputError(
                f"'{checkpoint.path.name}' is a GGUF file; transformers needs a checkpoint folder",
                "use --engine llamacpp for GGUF files",
            )
        torch: Any = require("torch", "hf", "the transformers engine")
        transformers: Any = require("transformers", "hf", "the transformers engine")
        self.mode: Mode = "pipeline" if isinstance(options, PipelineOptions) else "direct"
        self.name = "hf" if self.mode == "direct" else "hf-pipeline"
        self.checkpoint = checkpoint
        self._torch = torch
        self._lock = threading.Lock()
        self.device, self.dtype = placement(options.device, options.dtype, checkpoint)
        quant_config = quantization_config(options.quantize, self.device)
        if options.check_memory:
            precision = options.quantize or str(self.dtype).removeprefix("torch.")
            check_fits(count_parameters(checkpoint.path), precision, self.device, detect_hardware())
        logging = transformers.utils.logging
        (logging.enable_progress_bar if options.progress else logging.disable_progress_bar)()
        path = str(checkpoint.path)
        self.multimodal = checkpoint.multimodal
        try:
            if self.multimodal:
                self.processor: Any = transformers.AutoProcessor.from_pretrained(path)
                self.tokenizer: Any = self.processor.tokenizer
                model_class: Any = transformers.AutoModelForImageTextToText
            else:
                self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
                self.processor = self.tokenizer
                model_class = transformers.AutoModelForCausalLM
        except (OSError, ValueError) as exc:
            raise NotACheckpointError(
                f"'{path}' has no usable tokenizer/processor ({exc.__class__.__name__}: {exc})",
                "the checkpoint must include the tokenizer files; re-download it",
            ) from exc
        if not getattr(self.processor, "chat_template", None):
            self.processor.chat_template = shipped_chat_template()
            self.tokenizer.chat_template = self.processor.chat_template
        load_kwargs: dict[str, Any] = {"dtype": self.dtype}
        if quant_config is not None:
            load_kwargs |= {"quantization_config": quant_config, "device_map": "auto"}
        elif self.device.startswith("cuda"):
            load_kwargs["device_map"] = self.device
        self.model = model_class.from_pretrained(path, **load_kwargs).eval()
        if (self.multimodal and self.device == "cpu" and self.dtype != torch.float32
                and not cpu_has_native_bf16()):
            _vision_in_float32(self.model)
        self.adapter = None
        if options.adapter:
            self.adapter = find_adapter(options.adapter)
            self.model = attach_adapter(self.model, self.adapter)
        self._pipeline: Any = None
        if self.mode == "pipeline":
            task = "image-text-to-text" if self.multimodal else "text-generation"
            extra = {"processor": self.processor} if self.multimodal else {"tokenizer": self.tokenizer}
            self._pipeline = transformers.pipeline(task, model=self.model, **extra)
        config = self.model.config
        text_config = getattr(config, "text_config", config)
        merged = getattr(config, "medgem_adapter", None) or {}  # written by `medgem tune --merge`
        self.info = base.ModelInfo(
            id=checkpoint.model_id,
            revision=checkpoint.revision,
            variant=checkpoint.variant.key if checkpoint.variant else None,
            engine=self.name,
            dtype=str(self.dtype).removeprefix("torch."),
            quantization=options.quantize,
            demo=checkpoint.demo,
            context_length=int(getattr(text_config, "max_position_embeddings", GEMMA3_CONTEXT)),
            path=path,
            adapter=self.adapter.name if self.adapter else merged.get("name"),
            adapter_sha256=self.adapter.sha256 if self.adapter else merged.get("sha256"),
        )
        markers = [self.tokenizer.convert_tokens_to_ids(m) for m in (THOUGHT_OPEN, THOUGHT_CLOSE)]
        self._grammars = Grammars(self._lltokenizer, *(m if isinstance(m, int) else -1 for m in markers))
        # Constrained decoding is a logits processor on the direct path (the pipeline's own
        # generate call is not ours to hand one to).
        self.capabilities = base.Capabilities(
            images=self.multimodal, batching="static" if self.mode == "direct" else None,
            constrained=self.mode == "direct" and importlib.util.find_spec("llguidance") is not None)

    # --- prompt rendering ----------------------------------------------------------------------

    def _completion_text(self, request: Request) -> tuple[str, list[Any]]:
        last = request.messages[-1]
        return self.tokenizer.bos_token + last.text, [part.image for part in last.images]

    def encode(self, request: Request) -> Any:
        """Tokenize (and preprocess images for) a request: a BatchFeature on the model's device."""
        # self.processor is the tokenizer itself for text-only checkpoints.
        if request.template == "completion":
            text, images = self._completion_text(request)
            image_kwargs = {"images": images or None} if self.multimodal else {}
            inputs = self.processor(text=text, return_tensors="pt", add_special_tokens=False,
                                    **image_kwargs)
        else:
            inputs = self.processor.apply_chat_template(
                request.template_messages(), add_generation_prompt=True, tokenize=True,
                return_dict=True, return_tensors="pt",
            )
        inputs = inputs.to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._vision_dtype())
        return inputs

    def _vision_dtype(self) -> Any:
        model = self.model.get_base_model() if self.adapter else self.model  # PEFT wraps it
        tower = getattr(getattr(model, "model", None), "vision_tower", None)
        # the first floating parameter: 8-bit towers also hold int8 weights
        parameters = tower.parameters() if tower is not None else ()
        return next((p.dtype for p in parameters if p.dtype.is_floating_point), self.dtype)

    def prepare(self, request: Request) -> base.Prepared:
        """Encode once. The direct path keeps the tensors for generate; the pipeline path
        keeps only the count (the pipeline API takes the messages and encodes them itself)."""
        if request.options.constraint is not None:  # a schema llguidance refuses fails here
            self._grammars.compile(request.options.constraint)
        inputs = self.encode(request)
        count = int(inputs["input_ids"].shape[-1])
        return base.Prepared(request, count, inputs if self.mode == "direct" else None)

    # --- generation ----------------------------------------------------------------------------

    def _generate_kwargs(self, request: Request, streamer: _TokenStreamer) -> dict[str, Any]:
        import transformers

        options = request.options
        kwargs: dict[str, Any] = {
            "max_new_tokens": max(streamer.budgets),
            "do_sample": not options.greedy,
            "streamer": streamer,
            # Rows end at their own end of turn, budget or cancel; the others go on.
            "stopping_criteria": transformers.StoppingCriteriaList([streamer.rows_done]),
        }
        if options.greedy:  # neutralise sampling defaults from generation_config.json
            return kwargs | {"top_p": None, "top_k": None}
        return kwargs | {"temperature": options.temperature, "top_p": options.top_p}

    def generate(self, request: Request | base.Prepared,
                 cancel: threading.Event | None = None) -> Iterator[base.EngineEvent]:
        prepared = base.as_prepared(self, request)
        # Always watched: a caller that stops reading must free the engine, not let it run on.
        for _, event in self.generate_batch([prepared], [cancel or threading.Event()]):
            yield event

    def generate_batch(self, items: list[base.Prepared],
                       cancels: list[threading.Event]) -> Iterator[tuple[int, base.EngineEvent]]:
        """Requests that sample alike as one left-padded ``generate`` (direct path), each row
        with its own budget, end of turn and cancel: (row, event) pairs, rows interleaved."""
        started = time.perf_counter()
        first = items[0].request
        streamer = _TokenStreamer(self.tokenizer, self._end_ids(),
                                  [item.request.options.budget for item in items], cancels)
        if first.options.seed is not None:
            self._torch.manual_seed(first.options.seed)
        kwargs = self._generate_kwargs(first, streamer)
        guides = [self._grammars.guide(item.request.options.constraint, item.request.options.think)
                  for item in items]
        if any(guides):
            import transformers

            kwargs["logits_processor"] = transformers.LogitsProcessorList(
                [GuidedRows(guides, self._grammars, streamer.end_ids, first.options.greedy)])
        if self.mode == "direct":
            inputs = items[0].state if len(items) == 1 else self._pad_left([i.state for i in items])

            def work() -> None:
                with self._torch.inference_mode():
                    self.model.generate(**inputs, **kwargs)
        elif len(items) > 1:
            raise InputError("the pipeline path runs one request at a time",
                             "use --engine hf for --parallel")
        else:
            work = functools.partial(self._run_pipeline, first, kwargs)
        yield from self._stream(work, streamer, items, started)

    def _pad_left(self, states: list[Any]) -> dict[str, Any]:
        """One batch of encoded prompts: token rows padded on the left, images in row order."""
        torch = self._torch
        longest = max(int(state["input_ids"].shape[-1]) for state in states)
        pad_id = self.tokenizer.pad_token_id or 0
        batch: dict[str, Any] = {}
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if key not in states[0]:
                continue
            fill = pad_id if key == "input_ids" else 0
            batch[key] = torch.cat([
                torch.nn.functional.pad(state[key], (longest - state[key].shape[-1], 0), value=fill)
                for state in states
            ])
        images = [state["pixel_values"] for state in states if "pixel_values" in state]
        if images:
            batch["pixel_values"] = torch.cat(images)
        return batch

    def _lltokenizer(self) -> Any:
        """llguidance's view of the tokenizer, sized to the model's logits, ending at its end ids."""
        from llguidance.hf import from_tokenizer

        vocab = int(self.model.config.get_text_config().vocab_size)
        return from_tokenizer(self.tokenizer, n_vocab=vocab, eos_token=sorted(self._end_ids()))

    def _end_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        end_of_turn = self.tokenizer.convert_tokens_to_ids("<end_of_turn>")
        if isinstance(end_of_turn, int):
            ids.add(end_of_turn)
        return {i for i in ids if i is not None}

    def _run_pipeline(self, request: Request, kwargs: dict[str, Any]) -> None:
        call = {"max_new_tokens": kwargs.pop("max_new_tokens"), "return_full_text": False}
        prompt: Any
        if request.template == "completion":
            prompt, images = self._completion_text(request)
            call |= ({"images": images or None, "processor_kwargs": {"add_special_tokens": False}}
                     if self.multimodal else {"add_special_tokens": False})
        else:
            prompt = request.template_messages()
        if self.multimodal:  # image-text-to-text takes generate's options apart
            self._pipeline(text=prompt, generate_kwargs=kwargs, **call)
        else:
            self._pipeline(prompt, **call, **kwargs)

    def _stream(self, work: Callable[[], None], streamer: _TokenStreamer,
                items: list[base.Prepared], started: float) -> Iterator[tuple[int, base.EngineEvent]]:
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with self._lock:
                    work()
            except BaseException as exc:  # handed to the caller's thread below
                errors.append(exc)
            finally:
                streamer.close()

        thread = threading.Thread(target=run, name="medgem-hf-generate", daemon=True)
        thread.start()
        first: dict[int, float] = {}
        try:
            for row, text in streamer:
                if text is None:  # the row ended
                    total = time.perf_counter() - started
                    yield row, self._finished(streamer, row, items[row], first.get(row, total), total)
                    continue
                first.setdefault(row, time.perf_counter() - started)
                if text:
                    yield row, base.TextDelta(text)
        finally:
            if thread.is_alive():
                for cancel in streamer.cancels:
                    cancel.set()
            thread.join()
        if errors:
            raise errors[0]

    def _finished(self, streamer: _TokenStreamer, row: int, item: base.Prepared, first: float,
                  total: float) -> base.Finished:
        tokens = streamer.tokens[row]
        if streamer.cancels[row].is_set():
            reason: base.FinishReason = "cancelled"
        elif tokens and tokens[-1] in streamer.end_ids:
            reason = "stop"
        else:
            reason = "length" if len(tokens) >= item.request.options.budget else "stop"
        return base.Finished(reason, base.Usage(item.prompt_tokens, len(tokens)),
                             base.Timings(first, total, len(tokens)))

    def health(self) -> dict[str, object]:
        return {}

    def close(self) -> None:
        self._pipeline = None
        del self.model
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()


class _TokenStreamer:
    """Receives token ids from generate() and hands out (row, text delta) through a queue, then
    (row, None) when a row ends (end of turn, its budget, or its cancel).

    transformers calls ``put`` first with the prompt (skipped), then once per step with one token
    per row, and ``end`` at the end. Text is decoded from all of a row's tokens so far and only
    the new suffix is sent, holding back an incomplete UTF-8 character. Tokens generate() adds to
    rows already ended (padding) are dropped.
    """

    def __init__(self, tokenizer: Any, end_ids: set[int], budgets: list[int],
                 cancels: list[threading.Event]) -> None:
        self._tokenizer = tokenizer
        self._queue: queue.Queue[tuple[int, str | None] | None] = queue.Queue()
        self._prompt_seen = False
        self.end_ids = end_ids
        self.budgets = budgets
        self.cancels = cancels
        self.tokens: list[list[int]] = [[] for _ in budgets]
        self._sent = ["" for _ in budgets]
        self._done = [False for _ in budgets]

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self._done[row]:
                continue
            self.tokens[row].append(int(token))
            text = self._tokenizer.decode(self.tokens[row], skip_special_tokens=True)
            if not text.endswith("\ufffd"):
                delta, self._sent[row] = text[len(self._sent[row]) :], text
                self._queue.put((row, delta))
            if int(token) in self.end_ids or len(self.tokens[row]) >= self.budgets[row]:
                self._end(row)

    def _end(self, row: int) -> None:
        text = self._tokenizer.decode(self.tokens[row], skip_special_tokens=True)
        if len(text) > len(self._sent[row]):
            self._queue.put((row, text[len(self._sent[row]) :]))
            self._sent[row] = text
        self._done[row] = True
        self._queue.put((row, None))

    def rows_done(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        """The stopping criterion: a row stops once ended or cancelled."""
        import torch

        done = [d or c.is_set() for d, c in zip(self._done, self.cancels, strict=True)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def end(self) -> None:
        for row, done in enumerate(self._done):
            if not done:
                self._end(row)

    def close(self) -> None:
        """No more items (after ``end``, or after generate() failed: rows left open get no
        Finished, so the caller sees the error, not a short answer)."""
        self._queue.put(None)

    def __iter__(self) -> Iterator[tuple[int, str | None]]:
        while (item := self._queue.get()) is not None:
            yield item


def _vision_in_float32(model: Any) -> None:
    """Run the vision tower and projector in float32 on CPUs without native bf16, where bf16 is
    emulated and dominates time to first token (213 s of 304 s measured on a 4B shape). With
    AVX512-BF16 the bf16 tower is faster (26.8 s vs 36.8 s for the 4B tower on 2 cores)."""
    import torch

    inner = getattr(model, "model", model)
    for name in ("vision_tower", "multi_modal_projector"):
        module = getattr(inner, name, None)
        if module is not None and next(module.parameters()).dtype != torch.float32:
            module.to(torch.float32)
