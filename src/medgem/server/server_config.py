"""Server settings: one frozen dataclass built at the edge (CLI flags) and passed inward."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medgem.inputs.options import ImagingOptions

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_OUTPUT_TOKENS = 8192  # MedGemma's output limit (model cards)


@dataclass(frozen=True)
class ServerConfig:
    """How the HTTP server runs.

    Attributes:
        host: bind address; anything but loopback requires API keys.
        port: TCP port.
        model_name: the id clients send as ``model``; None uses the engine's model id.
        max_queue: requests allowed to wait for the engine; one more runs. Beyond: 429.
        max_body_bytes: largest request body accepted (images arrive base64 in JSON).
        max_images: most images per request.
        max_new_tokens: the largest ``max_tokens`` a client may ask for.
        allowed_dirs: folders a request may name files from; empty forbids local files.
        allowed_pacs: DICOMweb roots / ``dimse://AE@host:port`` peers ``image_dicom`` parts
            may name; empty forbids every PACS reference (403, nothing fetched). The page
            browses the same list (``/api/pacs/...``).
        pacs_browse_timeout_s: seconds one browse request to a PACS may take (then a 504).
        send_back: store answers to ``image_dicom`` questions on their PACS as DICOM SR once a
            review (``POST /api/reviews``) accepts or corrects them.
        send_back_unreviewed: also send each such answer as soon as it is made, as a
            preliminary, unverified SR (only with ``send_back``).
        api_key_file: the named, hashed key store; None means no keys (loopback only).
        log_prompts: also store prompt text and (de-identified) inputs in the audit store.
        cors_origins: origins allowed cross-site; empty turns CORS off.
        max_previews: /api/preview requests decoding uploads at once; one more is a 429.
        retry_after_s: the least Retry-After sent with a 429.
        drain_timeout_s: how long SIGTERM waits for in-flight requests.
        deid_key: key for DICOM pseudonyms when prompts are logged; None draws a random one.
        imaging: reading limits and policies for uploads (checked while reading).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str | None = None
    max_queue: int = 8
    max_body_bytes: int = 64 * 1024 * 1024
    max_images: int = 16
    max_new_tokens: int = MAX_OUTPUT_TOKENS
    allowed_dirs: tuple[Path, ...] = ()
    allowed_pacs: tuple[str, ...] = ()
    pacs_browse_timeout_s: float = 10.0
    send_back: bool = False
    send_back_unreviewed: bool = False
    api_key_file: Path | None = None
    log_prompts: bool = False
    cors_origins: tuple[str, ...] = ()
    max_previews: int = 2
    retry_after_s: int = 1
    drain_timeout_s: float = 60.0
    deid_key: bytes | None = None
    imaging: ImagingOptions = field(default_factory=ImagingOptions)

    @property
    def loopback(self) -> bool:
        """True when only this machine can reach the server."""
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.")
