"""Pieces of the HF -> GGUF conversion that know the file format: tensor names, the tokenizer
as GGUF metadata, and a streaming writer that never holds more than one tensor in memory.

Names follow llama.cpp's conventions for the ``gemma3`` text architecture and for ``clip``
vision projectors of type ``gemma3`` (as listed in the ``gguf`` package's constants). Gemma's
RMSNorm multiplies by ``1 + weight``; llama.cpp multiplies by the stored weight, so every Gemma
RMSNorm weight is stored plus one. SigLIP's LayerNorms are ordinary and stored as they are.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import TokenType

# llama.cpp token types, as official Gemma GGUFs carry them (SentencePiece uses the same numbers).
NORMAL, CONTROL, USER_DEFINED, UNUSED, BYTE = (int(t) for t in (
    TokenType.NORMAL, TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNUSED, TokenType.BYTE))

_MAX_BLOCKS = 128  # enough for every Gemma 3 size (27B has 62 text and 27 vision layers)
_TEXT_PREFIX = re.compile(r"^(?:model\.)?(?:language_model\.)?(?:model\.)?(?=embed_tokens|layers|norm)")
_VISION_PREFIX = re.compile(r"^(?:model\.)?vision_tower\.(?:vision_model\.)?")
_PROJECTOR_PREFIX = re.compile(r"^(?:model\.)?multi_modal_projector\.")


@dataclass(frozen=True)
class TensorTarget:
    """Where one HF tensor goes.

    Attributes:
        name: the GGUF tensor name.
        part: "text" (model.gguf) or "vision" (mmproj.gguf).
        gemma_norm: a Gemma RMSNorm weight (stored as 1 + weight).
    """

    name: str
    part: str
    gemma_norm: bool = False


def gguf_target(hf_name: str) -> TensorTarget | None:
    """The GGUF name for an HF Gemma 3 tensor, or None for tensors GGUF does not keep
    (the tied ``lm_head``). Names come from the ``gguf`` package's tensor maps for ``gemma3``
    and ``mmproj``, after the checkpoint's wrapper prefixes are normalised.

    Raises:
        KeyError: a tensor this converter does not know (a different architecture).
    """
    if hf_name.endswith("lm_head.weight"):
        return None
    if _VISION_PREFIX.match(hf_name):
        key, part = "vision_tower.vision_model." + _VISION_PREFIX.sub("", hf_name), "vision"
    elif _PROJECTOR_PREFIX.match(hf_name):
        rest = _PROJECTOR_PREFIX.sub("", hf_name)
        if rest == "mm_input_projection_weight":  # a bare parameter: the maps have no entry
            return TensorTarget("mm.input_projection.weight", "vision")
        key, part = "multi_modal_projector." + rest, "vision"
    elif _TEXT_PREFIX.match(hf_name):
        key, part = "model." + _TEXT_PREFIX.sub("", hf_name), "text"
    else:
        raise KeyError(hf_name)
    name = _name_map(part).get_name(key, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise KeyError(hf_name)
    # Gemma RMSNorms (text norms and the projector's soft-embedding norm) store 1 + weight.
    stem = name.rsplit(".", 1)[0]
    gemma_norm = stem.endswith("norm") and (part == "text" or stem == "mm.soft_emb_norm")
    return TensorTarget(name, part, gemma_norm=gemma_norm)


@functools.lru_cache(maxsize=2)
def _name_map(part: str) -> Any:
    import gguf

    arch = gguf.MODEL_ARCH.GEMMA3 if part == "text" else gguf.MODEL_ARCH.MMPROJ
    return gguf.get_tensor_name_map(arch, _MAX_BLOCKS)


# --- tokenizer ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizerData:
    """The SentencePiece vocabulary as GGUF's ``llama`` tokenizer model stores it."""

    tokens: list[str]
    scores: list[float]
    types: list[int]
    bos_id: int
    eos_id: int
    unk_id: int
    pad_id: int
    source: str  # "tokenizer.model" (exact) or "tokenizer.json" (reconstructed)


def read_tokenizer(folder: Path, vocab_size: int) -> TokenizerData:
    """Read the checkpoint's Gemma 3 tokenizer, padded to the embedding's row count.

    ``tokenizer.model`` (the SentencePiece model official checkpoints ship) is read exactly:
    pieces, scores and types. Without it, ``tokenizer.json`` gives the pieces; types follow
    from the added tokens (special -> control, other -> user-defined), ``<0xXX>`` pieces are
    bytes, pieces with a literal space are user-defined (SentencePiece writes spaces as U+2581
    in normal pieces); normal pieces get the score ``-rank``, which orders merges as the original
    scores do. Rows past the vocabulary (the embedding is padded) become unused ``<pad_N>``
    pieces.

    Raises:
        FileNotFoundError: neither file is present.
    """
    special = _special_ids(folder)
    if (folder / "tokenizer.model").is_file():
        tokens, scores, types = read_sentencepiece((folder / "tokenizer.model").read_bytes())
        _add_json_extras(folder, tokens, scores, types)
        source = "tokenizer.model"
    elif (folder / "tokenizer.json").is_file():
        tokens, scores, types = _read_tokenizer_json(folder / "tokenizer.json")
        source = "tokenizer.json"
    else:
        raise FileNotFoundError(f"no tokenizer.model or tokenizer.json in {folder}")
    _pad_to(vocab_size, tokens, scores, types)
    return TokenizerData(tokens[:vocab_size], scores[:vocab_size], types[:vocab_size],
                         source=source, **special)


def _special_ids(folder: Path) -> dict[str, int]:
    ids = {"bos_id": 2, "eos_id": 1, "unk_id": 3, "pad_id": 0}  # Gemma's fixed layout
    config_path = folder / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        text = config.get("text_config", config)
        for key, name in (("bos_token_id", "bos_id"), ("pad_token_id", "pad_id")):
            value = text.get(key, config.get(key))
            if isinstance(value, int):
                ids[name] = value
    return ids


# Gemma 3's SentencePiece model makes the image delimiters user-defined pieces (they are written
# as text in prompts); tokenizer.json flags them special like the control tokens.
_USER_DEFINED_SPECIALS = frozenset({"<start_of_image>", "<end_of_image>"})


def _read_tokenizer_json(path: Path) -> tuple[list[str], list[float], list[int]]:
    data = json.loads(path.read_text())
    vocab: dict[str, int] = data["model"]["vocab"]
    added = {int(t["id"]): t for t in data.get("added_tokens", [])}
    size = max([*vocab.values(), *added.keys()]) + 1
    tokens = [f"<pad_{i}>" for i in range(size)]
    types = [UNUSED] * size
    first_byte = vocab.get("<0x00>", 0)
    for piece, index in vocab.items():
        tokens[index] = piece
        if re.fullmatch(r"<0x[0-9A-F]{2}>", piece):
            types[index] = BYTE
        elif index < first_byte:
            # SentencePiece keeps user-defined pieces (Gemma's runs of spaces) before the byte
            # pieces, with literal spaces; tokenizer.json shows them escaped like normal pieces.
            tokens[index] = piece.replace("\u2581", " ")
            types[index] = USER_DEFINED
        else:
            types[index] = NORMAL
    for index, token in added.items():
        tokens[index] = token["content"]
        special = token.get("special") and token["content"] not in _USER_DEFINED_SPECIALS
        types[index] = CONTROL if special else USER_DEFINED
    scores: list[float] = []
    rank = 0
    for kind in types:
        if kind == NORMAL:
            scores.append(float(-rank))
            rank += 1
        else:
            scores.append(0.0 if kind == BYTE else -1000.0)
    return tokens, scores, types


def _add_json_extras(folder: Path, tokens: list[str], scores: list[float], types: list[int]) -> None:
    """Tokens added after the SentencePiece model (the image soft token), from tokenizer.json."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return
    base = len(tokens)
    for token in json.loads(path.read_text()).get("added_tokens", []):
        index = int(token["id"])
        if index < base:
            continue
        _pad_to(index + 1, tokens, scores, types)
        tokens[index] = token["content"]
        types[index] = CONTROL if token.get("special") else USER_DEFINED
        scores[index] = -1000.0


def _pad_to(size: int, tokens: list[str], scores: list[float], types: list[int]) -> None:
    """Fill rows up to ``size`` with unused ``<pad_N>`` pieces."""
    for index in range(len(tokens), size):
        tokens.append(f"<pad_{index}>")
        scores.append(-1000.0)
        types.append(UNUSED)


def read_sentencepiece(data: bytes) -> tuple[list[str], list[float], list[int]]:
    """Pieces, scores and types of a SentencePiece ``tokenizer.model`` (its ModelProto).

    The piece types use llama.cpp's token-type numbers, which are SentencePiece's own.
    """
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]
    proto.ParseFromString(data)
    return ([piece.piece for piece in proto.pieces], [piece.score for piece in proto.pieces],
            [int(piece.type) for piece in proto.pieces])


# --- streaming writer --------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor to write: its name, numpy shape, GGML type name and a loader."""

    name: str
    shape: tuple[int, ...]
    ggml_type: str  # "F32", "F16" or "BF16"
    load: Callable[[], np.ndarray[Any, Any]]


def write_gguf(path: Path, arch: str, metadata: Callable[[Any], None], tensors: list[PlannedTensor],
               progress: Callable[[int, int, str], None] | None = None) -> None:
    """Write a GGUF file one tensor at a time.

    Args:
        path: output file.
        arch: ``general.architecture``.
        metadata: called with the ``gguf.GGUFWriter`` to add key/values.
        tensors: in file order; each loader returns an array already in the target type
            (uint16 bit patterns for BF16).
        progress: called with (done, total, tensor name) after each tensor.
    """
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    metadata(writer)
    for tensor in tensors:
        kind = gguf.GGMLQuantizationType[tensor.ggml_type]
        itemsize = 4 if tensor.ggml_type == "F32" else 2
        nbytes = int(np.prod(tensor.shape)) * itemsize
        if tensor.ggml_type == "BF16":
            byte_shape = (*tensor.shape[:-1], tensor.shape[-1] * 2)
            writer.add_tensor_info(tensor.name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=kind)
        else:
            writer.add_tensor_info(tensor.name, tensor.shape,
                                   np.dtype(np.float32 if tensor.ggml_type == "F32" else np.float16),
                                   nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for done, tensor in enumerate(tensors, start=1):
        array = tensor.load()
        if tensor.ggml_type == "BF16":
            array = np.ascontiguousarray(array).view(np.uint8)
        writer.write_tensor_data(np.ascontiguousarray(array))
        if progress is not None:
            progress(done, len(tensors), tensor.name)
    writer.close()


# --- a projector with random weights, for measuring kernels ------------------------------------


def write_random_mmproj(path: Path, *, layers: int = 1, hidden: int = 1152, intermediate: int = 4304,
                        heads: int = 16, image_size: int = 896, patch_size: int = 14,
                        scale_factor: int = 4, text_hidden: int = 256, matrices: str = "F16",
                        seed: int = 0) -> Path:
    """A Gemma 3 vision projector (SigLIP + the pooling projector) with random weights, laid
    out as ``medgem convert`` writes one; by default one layer of MedGemma's tower at 896 px.

    Why: the vision path and precision are chosen by timing them here, at the real tower's
    shapes, before a real projector is ever run (``kernels.choose_vision``); layers cost the
    same, so one stands for 27.

    Args:
        path: output file.
        matrices: the encoder's weight matrices in "F16" (what convert writes) or "Q8_0"
            (llama.cpp's int8 blocks, quantized by the ``gguf`` package; a matrix whose rows
            are not whole 32-value blocks, the MLP's down projection at 4304, stays F16); the
            patch embedding and projection stay F16, norms, biases and positions F32.

    Returns:
        ``path``.
    """
    import gguf

    if matrices not in ("F16", "Q8_0"):
        raise ValueError(f"matrices must be F16 or Q8_0, not {matrices}")
    rng = np.random.default_rng(seed)
    patches = (image_size // patch_size) ** 2
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_name("medgem kernel measurement projector")
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16 if matrices == "F16" else gguf.LlamaFileType.MOSTLY_Q8_0))
    writer.add_string("clip.projector_type", "gemma3")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.use_gelu", True)
    for key, value in (("image_size", image_size), ("patch_size", patch_size), ("embedding_length", hidden),
                       ("feed_forward_length", intermediate), ("block_count", layers),
                       ("projection_dim", text_hidden), ("attention.head_count", heads),
                       ("projector.scale_factor", scale_factor)):
        writer.add_uint32(f"clip.vision.{key}", value)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    def random(*shape: int) -> np.ndarray[Any, Any]:  # numpy (rows, columns) = GGML (ne1, ne0)
        return (rng.standard_normal(shape) * hidden ** -0.5).astype(np.float32)

    def matrix(name: str, rows: int, columns: int) -> None:
        values = random(rows, columns)
        if matrices == "F16" or columns % 32:  # Q8_0 blocks are 32 along a row: 4304 is not
            writer.add_tensor(name, values.astype(np.float16))
        else:
            kind = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(values, kind), raw_dtype=kind)

    zeros = np.zeros(hidden, dtype=np.float32)
    writer.add_tensor("v.patch_embd.weight", random(hidden, 3, patch_size, patch_size).astype(np.float16))
    writer.add_tensor("v.patch_embd.bias", zeros)
    writer.add_tensor("v.position_embd.weight", random(patches, hidden))
    for index in range(layers):
        block = f"v.blk.{index}"
        for norm in ("ln1", "ln2"):
            writer.add_tensor(f"{block}.{norm}.weight", np.ones(hidden, dtype=np.float32))
            writer.add_tensor(f"{block}.{norm}.bias", zeros)
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            matrix(f"{block}.{name}.weight", hidden, hidden)
            writer.add_tensor(f"{block}.{name}.bias", zeros)
        matrix(f"{block}.ffn_up.weight", intermediate, hidden)
        writer.add_tensor(f"{block}.ffn_up.bias", np.zeros(intermediate, dtype=np.float32))
        matrix(f"{block}.ffn_down.weight", hidden, intermediate)
        writer.add_tensor(f"{block}.ffn_down.bias", zeros)
    writer.add_tensor("v.post_ln.weight", np.ones(hidden, dtype=np.float32))
    writer.add_tensor("v.post_ln.bias", zeros)
    writer.add_tensor("mm.input_projection.weight", random(hidden, text_hidden).astype(np.float16))
    writer.add_tensor("mm.soft_emb_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
