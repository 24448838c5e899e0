"""The Python API: ``MedGemma.load(...)``, then ``ask``, ``stream`` and ``chat``.

This is the layer every surface (CLI, server, evaluation) uses. It resolves the checkpoint,
builds the engine, builds prompts, checks the context, assembles answers and writes each
answer's audit record.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medgem.answer import (
    INTENDED_USE_CAVEAT,
    OTHER_MODEL_CAVEAT,
    Answer,
    FinalChunk,
    StreamChunk,
    assemble,
)
from medgem.answer.stops import apply_stops
from medgem.audit import AuditStore, open_store
from medgem.audit.trail import AuditTrail
from medgem.config import load_settings
from medgem.engines import EngineOptions, choose_engine, engine_key, load_engine, options_for
from medgem.engines.base import context_to_hold
from medgem.engines.batching import Batcher
from medgem.errors import (
    ClientDisconnectedError,
    ContextLengthError,
    ImageInputError,
    InputError,
    UnsupportedInputError,
)
from medgem.inputs import ImagingOptions, Inputs, Upload, read_inputs
from medgem.request import GenerationOptions, ImagePart, Message, Request
from medgem.request.compose import check_question, request_for_inputs
from medgem.request.openai_messages import request_from_openai
from medgem.request.variants import Variant, find_variant
from medgem.resolve import Checkpoint, resolve_checkpoint
from medgem.structured import Constraint
from medgem.structured.builtin import as_constraint

if TYPE_CHECKING:
    from medgem.engines.base import Engine

log = logging.getLogger("medgem")


class MedGemma:
    """A loaded model behind one engine.

    Build with :meth:`load`; or wrap an existing engine (tests, custom engines) directly.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        variant: Variant | None = None,
        chat_model: bool = True,
        caveat: str | None = INTENDED_USE_CAVEAT,
        checkpoint: Checkpoint | None = None,
        audit: AuditTrail | None = None,
        parallel: int = 1,
    ) -> None:
        self.engine = engine
        self.variant = variant
        self.chat_model = chat_model
        # MedGemma's intended-use text speaks of MedGemma: other checkpoints get the same limits
        # without that claim.
        self.caveat = OTHER_MODEL_CAVEAT if caveat == INTENDED_USE_CAVEAT and variant is None else caveat or ""
        self.checkpoint = checkpoint
        self.audit = audit
        self.batcher = Batcher(engine, parallel)

    @classmethod
    def load(
        cls,
        model: str | os.PathLike[str],
        *,
        engine: str = "auto",
        options: EngineOptions | Mapping[str, Any] | None = None,
        variant: str | None = None,
        mmproj: str | os.PathLike[str] | None = None,
        revision: str | None = None,
        caveat: str | None = INTENDED_USE_CAVEAT,
        audit: AuditStore | str | os.PathLike[str] | bool = True,
        surface: str = "python",
    ) -> MedGemma:
        """Resolve a checkpoint and load it on an engine.

        Args:
            model: a folder, a .gguf, a variant key ("4b-it") or a hub id; for the remote engine,
                the model name the server knows.
            engine: "auto", "hf", "hf-pipeline", "llamacpp" or "remote".
            options: how to run it: the engine's options object (``HFOptions``,
                ``LlamaCppOptions``, ``RemoteOptions``, ``PipelineOptions`` from
                ``medgem.engines``) or a mapping of its fields (handy with ``engine="auto"``),
                e.g. ``{"n_ctx": 16384, "parallel": 4}``. The settings (``medgem.config.Settings``:
                MEDGEM_* variables, the file's tables) fill what it leaves unset. ``parallel``: requests
                decoded together (llama.cpp: one KV-cache slot of ``n_ctx`` each; transformers:
                batches of waiting requests; remote: requests in flight to each server).
            variant: force the MedGemma variant when it cannot be read from the files.
            caveat: the intended-use caveat attached to answers; "" turns it off.
            audit: where every answer's record goes: True for the local default store
                ($MEDGEM_AUDIT_DB or ~/.local/share/medgem/audit.sqlite), a path or an open
                store; False turns the audit trail off (an explicit choice).
            surface: the name records give for where the question came from.

        Raises:
            OptionsError: an option the engine does not take, before anything loads.
            MedgemError subclasses with a message and what to do.
        """
        if engine == "remote":
            from medgem.engines.remote import RemoteEngine

            built, parallel = _engine_options("remote", options)
            trail = _trail(audit, surface)  # a store that cannot open is said before any load
            remote = load_engine("remote", str(model), built)
            # The server names the variant; its thinking and budgets apply here too.
            known = find_variant(variant or remote.info.variant or "")
            # ``parallel`` is per backend: the front runs that many for each server it has.
            servers = len(remote.backends) if isinstance(remote, RemoteEngine) else 1
            return cls(remote, variant=known, caveat=caveat, audit=trail, parallel=parallel * servers)
        checkpoint = resolve_checkpoint(model, variant=variant, mmproj=mmproj, revision=revision)
        name = engine_key(engine) if engine != "auto" else choose_engine(checkpoint)
        built, parallel = _engine_options(name, options)
        trail = _trail(audit, surface)  # a store that cannot open is said before the model loads
        loaded = load_engine(name, checkpoint, built)
        return cls(
            loaded,
            variant=checkpoint.variant,
            chat_model=checkpoint.instruction_tuned or checkpoint.format == "gguf",
            caveat=caveat,
            checkpoint=checkpoint,
            audit=trail,
            parallel=parallel,
        )

    @property
    def can_think(self) -> bool:
        """Whether this model was trained to think: the variant's word. A checkpoint that is not
        a recognised MedGemma is not claimed to think (it may still be asked to)."""
        return self.variant is not None and self.variant.thinking

    # --- building requests -------------------------------------------------------------------

    def request(
        self,
        question: str,
        *,
        images: Sequence[Any] | Inputs = (),
        system: str | None = None,
        history: Sequence[Any] = (),
        options: GenerationOptions | None = None,
        imaging: ImagingOptions | None = None,
        max_patches: int | None = None,
        patch_seed: int | None = None,
        magnification: float | None = None,
        mpp: float | None = None,
        max_pages: int | None = None,
        pdf_text: bool | None = None,
        schema: Constraint | Mapping[str, Any] | type[Any] | str | None = None,
        **generation: Any,
    ) -> Request:
        """Build the Request for a question; images may be PIL images, files, folders or zips.

        Args:
            question: the user's text.
            images: PIL images, image bytes, or paths to pictures, DICOM files/folders/zips, NIfTI,
                whole-slide images (.svs, .ndpi, .mrxs, .scn, pyramidal/OME TIFF, DICOM WSI
                folder or zip) or PDFs (one of them alone is one input); or what
                ``medgem.inputs.read_inputs`` already read.
            system: the system prompt.
            history: earlier turns (Messages) of a chat.
            options: how to generate (:class:`GenerationOptions`).
            imaging: how inputs are read (:class:`ImagingOptions`); ``max_patches`` ..
                ``pdf_text`` are set on top of it (:func:`imaging_options`).
            schema: constrain the answer to JSON: a JSON schema dict, a pydantic model class, a
                :class:`medgem.structured.Constraint`, "json" (any object) or a built-in name
                ("boxes", "lab-values", "cxr-findings"); ``Answer.parsed`` then holds it.
            **generation: GenerationOptions fields set on top of ``options`` (max_new_tokens,
                temperature, top_p, seed, stop, think); None leaves a field as it is.

        Raises:
            TypeError: an unknown generation field.
            SchemaError: an invalid or unsupported schema (before anything runs).
            MedgemError subclasses: bad input, with what to do.
        """
        check_question(question)  # before any image is read
        options = GenerationOptions.of(options, constraint=as_constraint(schema), **generation)
        if not isinstance(images, Inputs):
            images = read_inputs(_input_items(images), imaging_options(
                imaging, max_patches=max_patches, patch_seed=patch_seed,
                magnification=magnification, mpp=mpp, max_pages=max_pages, pdf_text=pdf_text))
        return request_for_inputs(
            question, images, system=system, chat=self.chat_model,
            variant=self.variant, history=history, options=options,
        )

    # --- running -----------------------------------------------------------------------------

    def generate(self, request: Request, cancel: threading.Event | None = None, *,
                 audit_context: Mapping[str, Any] | None = None) -> Iterator[StreamChunk]:
        """Run a built Request: thinking and answer chunks, then one FinalChunk.

        The engine encodes the prompt once: the context check reads that count and generation
        consumes the same encoding. With an audit trail, the answer's record is durable before
        the FinalChunk (which carries its id) is yielded, and a failure is recorded before it
        is raised.

        Args:
            audit_context: what the surface adds to the record (``user``, ``endpoint``,
                ``inputs``, ``record_id``, ...; see :mod:`medgem.audit.trail`).
        """
        context = audit_context or {}
        try:
            if request.images and not self.engine.capabilities.images:
                raise UnsupportedInputError(
                    f"'{self.engine.info.id}' is a text-only model and cannot read images",
                    "drop --image, or use an image model such as google/medgemma-4b-it",
                )
            if request.options.constraint is not None and not self.engine.capabilities.constrained:
                raise UnsupportedInputError(
                    f"the {self.engine.info.engine} engine cannot constrain its answer to a JSON schema",
                    "use --engine hf, llamacpp or remote, or drop the schema")
            prepared = self.engine.prepare(request)
            try:
                self.check_context(prepared.prompt_tokens, request)
                if cancel is not None and cancel.is_set():  # the caller left while it was encoded
                    raise ClientDisconnectedError("the client disconnected before prefill")
            except BaseException:
                prepared.release()
                raise
        except Exception as exc:
            self._record_failure(request, exc, context)
            raise
        cancel = cancel or threading.Event()  # set by a stop string, or by the caller
        events = apply_stops(self.batcher.generate(prepared, cancel), request.options.stop, cancel)
        chunks = assemble(events, self.engine.info, self.caveat, request.options.constraint)
        return chunks if self.audit is None else self._audited(request, chunks, context)

    def _audited(self, request: Request, chunks: Iterator[StreamChunk],
                 context: Mapping[str, Any]) -> Iterator[StreamChunk]:
        assert self.audit is not None
        try:
            for chunk in chunks:
                if isinstance(chunk, FinalChunk):
                    record_id = self.audit.answer(request, chunk.answer, self.engine.info, context)
                    chunk = FinalChunk(dataclasses.replace(chunk.answer, audit_id=record_id))
                yield chunk
        except Exception as exc:
            self._record_failure(request, exc, context)
            raise

    def _record_failure(self, request: Request, error: Exception,
                        context: Mapping[str, Any]) -> None:
        """Record a failure once; its id rides on the exception for the surface to report."""
        if self.audit is None or getattr(error, "audit_id", None) is not None:
            return
        try:
            error.audit_id = self.audit.failure(request, error, self.engine.info, context)  # type: ignore[attr-defined]
        except Exception:
            log.exception("could not write the audit record of a failed request")

    def check_context(self, prompt_tokens: int, request: Request) -> None:
        """Refuse a prompt of ``prompt_tokens`` that leaves no room for the answer; a prompt of
        several images says how many of them fit.

        Raises:
            ContextLengthError: the prompt does not fit.
        """
        limit = self.engine.info.context_length
        if prompt_tokens + 1 <= limit:
            return
        up_to = self.engine.capabilities.context_up_to
        message = (f"the prompt takes {prompt_tokens} tokens but the model's context is {limit}"
                   if up_to is None else
                   f"the prompt takes {prompt_tokens} tokens but this engine holds a context of {limit}")
        larger = ""
        if up_to is not None and prompt_tokens + 1 <= up_to:  # the model's window holds it
            size = context_to_hold(prompt_tokens + (request.options.max_new_tokens or 1024), up_to)
            larger = (f", or load the model with a larger context: --n-ctx {size} (medgem ask, "
                      f"medgem serve), options={{'n_ctx': {size}}} in Python (the model holds up "
                      f"to {up_to})")
        images = request.images
        if len(images) <= 1:
            raise ContextLengthError(message, "shorten the question, send fewer images or slices" + larger)
        fit = self._images_that_fit(request, prompt_tokens, limit)
        patches = request.layout == "slide"
        raise ContextLengthError(
            f"{message}: {fit} of {len(images)} {'patches' if patches else 'images'} fit",
            (f"use --max-patches {fit}" if patches else "send fewer images or slices") + larger,
        )

    def _images_that_fit(self, request: Request, full: int, limit: int) -> int:
        """How many of the request's images fit the context, measured with one image kept."""
        first = request.images[0]
        messages = tuple(
            Message(m.role, tuple(p for p in m.parts if not isinstance(p, ImagePart) or p is first))
            for m in request.messages
        )
        prepared = self.engine.prepare(dataclasses.replace(request, messages=messages))
        one = prepared.prompt_tokens
        prepared.release()
        per_image = (full - one) / (len(request.images) - 1)
        base = one - per_image
        return max(0, int((limit - 1 - base) // per_image)) if per_image > 0 else 0

    def stream(self, question: str, **kwargs: Any) -> Iterator[StreamChunk]:
        """Like :meth:`ask`, yielding ThinkingChunk / AnswerChunk as they come, then FinalChunk."""
        return self.generate(self.request(question, **kwargs))

    def ask(self, question: str, **kwargs: Any) -> Answer:
        """Ask one question (optionally about images) and wait for the whole answer.

        Keyword args are those of :meth:`request`.
        """
        return _final(self.stream(question, **kwargs))

    def chat(self, messages: Sequence[dict[str, Any]], *,
             options: GenerationOptions | None = None, **generation: Any) -> Answer:
        """Answer an OpenAI-style conversation (the last message must be the user's).

        ``options`` and ``**generation`` as in :meth:`request`.
        """
        return _final(self.stream_chat(messages, options=options, **generation))

    def stream_chat(self, messages: Sequence[dict[str, Any]], *,
                    options: GenerationOptions | None = None,
                    schema: Constraint | Mapping[str, Any] | type[Any] | str | None = None,
                    **generation: Any) -> Iterator[StreamChunk]:
        """Like :meth:`chat`, yielding chunks as they come, then FinalChunk (``schema`` as in
        :meth:`request`)."""
        options = GenerationOptions.of(options, constraint=as_constraint(schema), **generation)
        request = request_from_openai(messages, variant=self.variant, chat=self.chat_model,
                                      options=options)
        return self.generate(request)

    def ask_many(self, requests: Iterable[Request], *, concurrency: int | None = None,
                 audit_context: Mapping[str, Any] | None = None,
                 ) -> Iterator[tuple[int, Answer | Exception]]:
        """Run many requests, ``concurrency`` (default: ``parallel`` of :meth:`load`) in flight
        together; the engine decodes them in one batch.

        Yields (index in ``requests``, the Answer or the error it raised) as each finishes, so
        a caller can record results as they come; one failed request does not stop the others.
        """
        limit = max(1, concurrency or self.batcher.parallel)
        with ThreadPoolExecutor(max_workers=limit, thread_name_prefix="medgem-ask") as pool:
            running: dict[Future[Answer], int] = {}
            for index, request in enumerate(requests):
                running[pool.submit(self._answer, request, audit_context)] = index
                if len(running) >= limit:
                    yield from self._collect(running)
            while running:
                yield from self._collect(running)

    def _answer(self, request: Request, audit_context: Mapping[str, Any] | None) -> Answer:
        return _final(self.generate(request, audit_context=audit_context))

    @staticmethod
    def _collect(running: dict[Future[Answer], int]) -> Iterator[tuple[int, Answer | Exception]]:
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            index = running.pop(future)
            error = future.exception()
            yield (index, error if isinstance(error, Exception) else future.result())

    def close(self) -> None:
        self.batcher.close()
        self.engine.close()


def imaging_options(base: ImagingOptions | None = None, *, max_patches: int | None = None,
                    patch_seed: int | None = None, magnification: float | None = None,
                    mpp: float | None = None, max_pages: int | None = None,
                    pdf_text: bool | None = None,
                    cancelled: Callable[[], bool] | None = None) -> ImagingOptions:
    """``ImagingOptions`` from keyword arguments (the Python API, HTTP bodies): ``base`` (or
    ``ImagingOptions()``'s defaults) with each field given set on top; None keeps ``base``'s.
    ``patch_seed`` draws a slide's patches (not the generation seed); ``cancelled`` stops
    reading when it returns True (the server: "has the client left?").

    Raises:
        ImageInputError: a value out of range.
    """
    given: dict[str, Any] = {
        "max_patches": max_patches, "patch_seed": patch_seed, "magnification": magnification,
        "mpp": mpp, "max_pages": max_pages, "pdf_text": pdf_text, "cancelled": cancelled}
    try:
        return replace(base or ImagingOptions(), **{k: v for k, v in given.items() if v is not None})
    except ValueError as exc:
        raise ImageInputError(str(exc), "check the imaging options") from None


def _input_items(images: Any) -> list[Any]:
    """``images=`` as the list the inputs door reads: one path, PIL image or bytes given alone
    is that one input (a str is not a sequence of paths), and raw bytes are an upload."""
    from PIL import Image

    if isinstance(images, str | os.PathLike | bytes | bytearray | Image.Image):
        images = [images]
    return [Upload(bytes(item)) if isinstance(item, bytes | bytearray) else item for item in images]


def _engine_options(engine: str, options: EngineOptions | Mapping[str, Any] | None
                    ) -> tuple[EngineOptions, int]:
    """The engine's options object (what was given, over the settings: environment, file) and
    the requests it runs together (engines without batching take no ``parallel``: one).

    Raises:
        InputError: ``parallel`` below one.
    """
    built = options_for(engine, options, load_settings().engine_fields(engine))
    parallel = int(getattr(built, "parallel", 1))
    if parallel < 1:
        raise InputError(f"--parallel must be at least 1, got {parallel}")
    return built, parallel


def _trail(audit: AuditStore | str | os.PathLike[str] | bool, surface: str) -> AuditTrail | None:
    """The audit trail ``load`` was asked for (see its ``audit`` argument)."""
    if audit is False:
        return None
    if audit is True or isinstance(audit, (str, os.PathLike)):
        return AuditTrail(open_store(None if audit is True else Path(audit)), surface)
    return AuditTrail(audit, surface)


def _final(chunks: Iterator[StreamChunk]) -> Answer:
    for chunk in chunks:
        if isinstance(chunk, FinalChunk):
            return chunk.answer
    raise RuntimeError("engine stream ended without a final answer")  # engines always finish
