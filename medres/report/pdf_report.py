"""A scan's ``report.pdf``: the same facts as its HTML page, laid out on A4 pages.

The page reads like the HTML one printed: title, research notice, the scan table, notes,
the models, the findings table, the detector's boxes, the overview images, the key
images three to a row with their captions, and the footnotes. Written with
:mod:`medres.report.pdf_writer` (standard fonts, PNGs embedded as they are), so it costs
milliseconds per scan; nothing is laid out twice and no HTML engine runs.
"""

from __future__ import annotations

from collections.abc import Sequence

from medres.report.html import NOTICE, PageFacts, Table
from medres.report.pdf_writer import (
    PAGE_HEIGHT,
    PAGE_WIDTH,
    PdfWriter,
    png_image,
    text_width,
    wrap,
)

MARGIN = 34.0  # 1.2 cm, as the HTML's print style
WIDTH = PAGE_WIDTH - 2 * MARGIN
TEXT = (0.11, 0.11, 0.11)
MUTED = (0.4, 0.4, 0.4)
BORDER = (0.73, 0.73, 0.73)
HEADER_FILL = (0.93, 0.93, 0.93)
NOTICE_FILL, NOTICE_EDGE = (1.0, 0.957, 0.839), (0.878, 0.722, 0.298)
BODY, SMALL, CELL = 9.0, 7.5, 7.5
IMAGE_GAP = 6.0


class _Flow:
    """A cursor running down the pages: each block asks for its height first."""

    def __init__(self, writer: PdfWriter) -> None:
        self.writer = writer
        self.y = PAGE_HEIGHT - MARGIN

    def need(self, height: float) -> None:
        """Start a new page unless ``height`` points fit below the cursor."""
        if self.y - height < MARGIN and self.y < PAGE_HEIGHT - MARGIN - 1:
            self.writer.new_page()
            self.y = PAGE_HEIGHT - MARGIN

    def lines(
        self,
        text: str,
        *,
        size: float = BODY,
        bold: bool = False,
        colour: tuple[float, float, float] = TEXT,
        gap: float = 4,
    ) -> None:
        for line in wrap(text, WIDTH, size, bold=bold):
            self.need(size * 1.3)
            self.y -= size * 1.3
            self.writer.text(
                MARGIN, self.y + size * 0.25, line, size=size, bold=bold, colour=colour
            )
        self.y -= gap

    def heading(self, text: str, size: float = 11.5, *, keep: float = 3 * BODY) -> None:
        """A section title, kept on one page with the first ``keep`` points after it."""
        self.need(size * 1.6 + keep)
        self.y -= size * 0.6
        self.lines(text, size=size, bold=True, gap=3)

    def notice(self, text: str) -> None:
        lines = wrap(text, WIDTH - 12, BODY, bold=True)
        height = len(lines) * BODY * 1.3 + 8
        self.need(height + 4)
        self.writer.rectangle(
            MARGIN, self.y - height, WIDTH, height, fill=NOTICE_FILL, stroke=NOTICE_EDGE
        )
        y = self.y - 4
        for line in lines:
            y -= BODY * 1.3
            self.writer.text(MARGIN + 6, y + BODY * 0.3, line, size=BODY, bold=True)
        self.y -= height + 6


def _column_widths(table: Table, width: float) -> list[float]:
    """Each column's width: its widest cell (headers may wrap at spaces), fitted to
    ``width``."""
    n = len(table.headers)
    natural = []
    for column in range(n):
        words = table.headers[column].split(" ")
        cells = [row[column] for row in table.rows if column < len(row)]
        widest = max(
            [text_width(w, CELL, bold=True) for w in words]
            + [text_width(c, CELL) for c in cells]
            + [text_width(table.headers[column], CELL, bold=True) * 0.5]
        )
        natural.append(widest + 8)
    total = sum(natural)
    if total <= width:
        return natural
    return [w * width / total for w in natural]


def _table(flow: _Flow, table: Table, *, empty: str = "", width: float = WIDTH) -> None:
    """Header row (grey, bold, wrapped) and rows; the header repeats after a page break."""
    widths = _column_widths(table, width)
    writer = flow.writer

    def row(cells: Sequence[str], bold: bool) -> None:
        wrapped = [wrap(c, w - 6, CELL, bold=bold) for c, w in zip(cells, widths, strict=False)]
        height = max(len(lines) for lines in wrapped) * CELL * 1.25 + 4
        flow.need(height)
        x = MARGIN
        for column, (lines, w) in enumerate(zip(wrapped, widths, strict=False)):
            writer.rectangle(
                x, flow.y - height, w, height, fill=HEADER_FILL if bold else None, stroke=BORDER
            )
            y = flow.y - 2
            for line in lines:
                y -= CELL * 1.25
                right = column not in table.text_columns
                offset = w - 3 - text_width(line, CELL, bold=bold) if right else 3
                writer.text(x + offset, y + CELL * 0.3, line, size=CELL, bold=bold)
            x += w
        flow.y -= height

    flow.need(4 * CELL * 1.25 + 8)
    row(table.headers, True)
    for cells in table.rows:
        if flow.y - CELL * 2 < MARGIN:
            flow.need(PAGE_HEIGHT)
            row(table.headers, True)
        row(cells, False)
    if not table.rows and empty:
        row([empty] + [""] * (len(table.headers) - 1), False)
    flow.y -= 5


def _identity(flow: _Flow, identity: Sequence[tuple[str, str]]) -> None:
    first = max(text_width(k, CELL, bold=True) for k, _ in identity) + 8
    rest = max(text_width(v, CELL) for _, v in identity) + 8
    table = Table(("", ""), tuple(identity), frozenset({0, 1}))
    writer = flow.writer
    height = CELL * 1.25 + 4
    for name, value in table.rows:
        flow.need(height)
        writer.rectangle(MARGIN, flow.y - height, first, height, fill=HEADER_FILL, stroke=BORDER)
        writer.rectangle(
            MARGIN + first, flow.y - height, min(rest, WIDTH - first), height, stroke=BORDER
        )
        writer.text(MARGIN + 3, flow.y - height + 4, name, size=CELL, bold=True)
        writer.text(MARGIN + first + 3, flow.y - height + 4, value, size=CELL)
        flow.y -= height
    flow.y -= 5


def _first_row_height(images: Sequence[bytes], per_row: int) -> float:
    column = (WIDTH - (per_row - 1) * IMAGE_GAP) / per_row
    shapes = [png_image(png) for png in images[:per_row]]
    return max((column * p.height / p.width for p in shapes), default=0.0) + SMALL * 1.6 + 4


def _images(flow: _Flow, images: Sequence[tuple[bytes, str]], *, per_row: int) -> None:
    """Images ``per_row`` to a row at their aspect, each with an optional caption."""
    column = (WIDTH - (per_row - 1) * IMAGE_GAP) / per_row
    for start in range(0, len(images), per_row):
        chunk = [(png_image(png), caption) for png, caption in images[start : start + per_row]]
        captioned = any(caption for _, caption in chunk)
        height = max(column * p.height / p.width for p, _ in chunk)
        flow.need(height + (SMALL * 1.6 if captioned else 0) + 4)
        x = MARGIN
        for png, caption in chunk:
            shown = column * png.height / png.width
            flow.writer.image(png, x, flow.y - shown, column, shown)
            if caption:
                flow.writer.text(x, flow.y - height - SMALL * 1.3, caption, size=SMALL)
            x += column + IMAGE_GAP
        flow.y -= height + (SMALL * 1.6 if captioned else 0) + IMAGE_GAP


def scan_pdf(facts: PageFacts) -> bytes:
    """The report PDF of one scan from the facts its HTML page shows.

    Long: one call per part of the page, in the page's order.
    """
    writer = PdfWriter(title=f"medres report: {facts.scan_id}")
    flow = _Flow(writer)
    flow.lines(f"Lesion report: {facts.scan_id}", size=15, bold=True, gap=6)
    flow.notice(NOTICE)
    flow.heading("Scan")
    _identity(flow, facts.identity)
    if facts.notes:
        flow.notice("Notes on reading this scan: " + " ".join(facts.notes))
    flow.heading("Model")
    for line in facts.model_lines:
        flow.lines(line)
    for line in facts.checksums:
        flow.lines(line, size=SMALL, colour=MUTED, gap=0)
    flow.y -= 4
    if facts.lesions is not None and facts.findings_title:
        flow.heading(facts.findings_title)
        _table(flow, facts.lesions)
        flow.lines(facts.lesions_note, size=SMALL, colour=MUTED)
    if facts.boxes is not None and facts.boxes_title:
        flow.heading(facts.boxes_title)
        _table(flow, facts.boxes, empty="No box reached the report score.")
        flow.lines(facts.boxes_note, size=SMALL, colour=MUTED)
    per_row = 3 if len(facts.overview) > 1 else 2
    overview = [png for _, png in facts.overview]
    flow.heading("Overview", keep=_first_row_height(overview, per_row))
    _images(flow, [(png, "") for _, png in facts.overview], per_row=per_row)
    key = [png for _, png, _ in facts.key_images]
    flow.heading("Key images", keep=_first_row_height(key, 3) if key else 3 * BODY)
    if facts.key_images:
        _images(flow, [(png, caption) for _, png, caption in facts.key_images], per_row=3)
    else:
        flow.lines(facts.no_key_images)
    flow.lines(facts.footnote, size=SMALL, colour=MUTED)
    flow.lines(facts.made, size=SMALL, colour=MUTED)
    return writer.to_bytes()


__all__ = ["scan_pdf"]
