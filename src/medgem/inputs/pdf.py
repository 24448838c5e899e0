"""PDF documents (lab reports, letters) -> page images at the model's resolution, in order.

Pages are rendered with pypdfium2 so the longer side is 896 px and padded with white to a
896x896 square (the model's processor then has nothing to stretch). A text layer, when there is
one, is extracted too; it goes to the model only when asked (``ImagingOptions.pdf_text``).
Document metadata (title, author, producer) is never read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from medgem.errors import ImageInputError, require
from medgem.inputs.options import ImagingOptions, MedicalInput

PAGE_SIDE = 896


def looks_like_pdf(head: bytes) -> bool:
    """PDF files start with ``%PDF-`` (some writers put junk first; the spec allows 1 KB)."""
    return b"%PDF-" in head[:1024]


def render_page(page: Any, side: int = PAGE_SIDE) -> Image.Image:
    """One page rendered so its longer side is ``side`` px, centred on a white square."""
    width, height = page.get_size()  # PDF points
    scale = side / max(width, height)
    rendered = page.render(scale=scale).to_pil().convert("RGB")
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(rendered, ((side - rendered.width) // 2, (side - rendered.height) // 2))
    return square


def read_pdf(path: Path, options: ImagingOptions) -> MedicalInput:
    """Render a PDF's pages (at most ``options.max_pages``) as the model's images.

    Raises:
        ImageInputError: encrypted, damaged, empty, or more pages than the limit.
    """
    pdfium: Any = require("pypdfium2", "pathology", "reading PDF documents")
    try:
        document = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise ImageInputError(f"{path.name} is password-protected (encrypted PDF)",
                                  "save an unprotected copy and send that") from exc
        raise ImageInputError(f"{path.name} is not a readable PDF ({exc})",
                              "copy the file again or print it to a new PDF") from exc
    try:
        pages = len(document)
        if pages == 0:
            raise ImageInputError(f"{path.name} has no pages", "check the file")
        if pages > options.max_pages:
            raise ImageInputError(
                f"{path.name} has {pages} pages, over the limit of {options.max_pages}",
                "send the pages that matter (split the PDF), or raise --max-pages")
        images: list[Image.Image] = []
        texts: list[str] = []
        for index in range(pages):
            page = document[index]
            try:
                images.append(render_page(page))
                textpage = page.get_textpage()
                texts.append(textpage.get_text_range().replace("\r\n", "\n").strip())
                textpage.close()
            except pdfium.PdfiumError as exc:
                raise ImageInputError(f"{path.name}: page {index + 1} cannot be rendered ({exc})",
                                      "print the document to a new PDF") from exc
            finally:
                page.close()
    finally:
        document.close()
    text_chars = sum(len(t) for t in texts)
    text = None
    if options.pdf_text and text_chars:
        text = "\n\n".join(f"[page {n}]\n{t}" for n, t in enumerate(texts, start=1) if t)
    return MedicalInput(
        kind="document",
        images=images,
        modality="DOC",
        study_date=None,
        description=f"document: {pages} page(s) rendered to {PAGE_SIDE}x{PAGE_SIDE}",
        source=path.name,
        metadata={"format": "pdf", "pages": pages, "text_chars": text_chars,
                  "text_sent": text is not None},
        text=text,
        warnings=[f"--pdf-text: {path.name} has no text layer (a scan?), so only its page images "
                  "are sent"] if options.pdf_text and not text_chars else [],
    )
