"""The GGUF format in one place: reading headers to check files before llama.cpp sees them
(``read``), writing GGUF tensors and tokenizers (``write``), and converting Hugging Face
MedGemma checkpoints to a GGUF model plus its vision projector (``convert``)."""
