"""A small PDF writer for reports: A4 pages of text, tables, boxes and PNG images.

What the scan reports need and nothing more, so that a report's PDF costs a few
milliseconds instead of an HTML layout engine's few hundred (measured in
``benchmarks/bench_report.py``):

* text in the PDF standard fonts Helvetica and Helvetica-Bold (every PDF reader has them;
  nothing is embedded), WinAnsi encoded; characters outside it are written as ``?``;
  widths come from the Adobe font metrics that matplotlib ships, so wrapping is exact;
* filled and stroked rectangles (table borders, the yellow notice box);
* PNG images embedded as they are: the PNG's compressed pixel data is a valid PDF
  Flate stream with the PNG predictor, so nothing is decoded or compressed again
  (8-bit RGB or grey, not interlaced: what :mod:`medres.report.drawing` writes).

Coordinates are PDF points (1/72 inch) from the bottom left of the page.
"""

from __future__ import annotations

import functools
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

#: A4 in points.
PAGE_WIDTH, PAGE_HEIGHT = 595.28, 841.89
FONTS = {"regular": ("F1", "Helvetica"), "bold": ("F2", "Helvetica-Bold")}
#: Characters beyond ASCII that reports use: their WinAnsi byte and glyph name.
_SPECIAL = {
    "²": (0xB2, "twosuperior"),
    "³": (0xB3, "threesuperior"),
    "×": (0xD7, "multiply"),
    "µ": (0xB5, "mu"),
    "°": (0xB0, "degree"),
    "±": (0xB1, "plusminus"),
    "–": (0x96, "endash"),
    "—": (0x97, "emdash"),
    "…": (0x85, "ellipsis"),
    "·": (0xB7, "periodcentered"),
}
_REPLACE = {"≥": ">=", "≤": "<=", "−": "-", "‘": "'", "’": "'", "“": '"', "”": '"'}


@functools.lru_cache(maxsize=4)
def _widths(font: str) -> tuple[dict[int, float], dict[str, float]]:
    """Advance widths (per 1000 em) of a standard font: by ASCII code and by glyph name."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "pdfcorefonts" / f"{font}.afm"
    by_code: dict[int, float] = {}
    by_name: dict[str, float] = {}
    try:
        lines = path.read_text(encoding="latin-1").splitlines()
    except OSError:
        return {}, {}
    for line in lines:
        if not line.startswith("C "):
            continue
        parts = dict(p.strip().split(" ", 1) for p in line.split(";") if p.strip())
        code, width, name = int(parts["C"]), float(parts["WX"]), parts.get("N", "")
        if 32 <= code <= 126:
            by_code[code] = width
        by_name[name] = width
    return by_code, by_name


def clean_text(text: str) -> str:
    """``text`` with the few characters WinAnsi lacks spelled out (``≥`` -> ``>=``)."""
    for char, spelled in _REPLACE.items():
        text = text.replace(char, spelled)
    return text


def text_width(text: str, size: float, *, bold: bool = False) -> float:
    """Width in points of ``text`` set in Helvetica (bold) at ``size``."""
    by_code, by_name = _widths(FONTS["bold" if bold else "regular"][1])
    total = 0.0
    for char in clean_text(text):
        code = ord(char)
        if code in by_code:
            total += by_code[code]
        elif char in _SPECIAL:
            total += by_name.get(_SPECIAL[char][1], 556.0)
        else:
            total += 556.0
    return total * size / 1000.0


def _encode(text: str) -> bytes:
    """PDF string bytes (WinAnsi), with ``(``, ``)`` and ``\\`` escaped."""
    out = bytearray()
    for char in clean_text(text):
        code = ord(char)
        if 32 <= code <= 126:
            if char in "()\\":
                out += b"\\"
            out.append(code)
        elif char in _SPECIAL:
            out += b"\\%03o" % _SPECIAL[char][0]
        elif 0xA0 <= code <= 0xFF:
            out += b"\\%03o" % code  # Latin-1 letters keep their WinAnsi code
        else:
            out += b"?"
    return bytes(out)


def wrap(text: str, width: float, size: float, *, bold: bool = False) -> list[str]:
    """``text`` broken at spaces into lines of at most ``width`` points (a word longer
    than a line is cut)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if text_width(candidate, size, bold=bold) <= width or not line:
                line = candidate
            else:
                lines.append(line)
                line = word
            while text_width(line, size, bold=bold) > width and len(line) > 1:
                cut = len(line)
                while cut > 1 and text_width(line[:cut], size, bold=bold) > width:
                    cut -= 1
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line)
    return lines


@dataclass(frozen=True)
class PngImage:
    """A PNG's pixel data ready to embed (see the module notes)."""

    width: int
    height: int
    colours: int
    data: bytes


def png_image(png: bytes) -> PngImage:
    """Read a PNG's size and compressed pixel data.

    Raises:
        ValueError: Not an 8-bit, non-interlaced RGB or grey PNG.
    """
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    position, chunks, header = 8, [], b""
    while position < len(png):
        (length,) = struct.unpack(">I", png[position : position + 4])
        kind = png[position + 4 : position + 8]
        body = png[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        position += 12 + length
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    colours = {0: 1, 2: 3}.get(colour_type)
    if depth != 8 or colours is None or interlace:
        raise ValueError("only 8-bit non-interlaced RGB or grey PNGs can be embedded")
    return PngImage(width=width, height=height, colours=colours, data=b"".join(chunks))


@dataclass
class _Page:
    commands: list[bytes] = field(default_factory=list)
    images: dict[str, int] = field(default_factory=dict)  # name -> image index


class PdfWriter:
    """Pages of drawing commands, serialised by :meth:`to_bytes`."""

    def __init__(self, *, title: str = "") -> None:
        self.title = title
        self.pages: list[_Page] = []
        self.images: list[PngImage] = []
        self.new_page()

    @property
    def page(self) -> _Page:
        return self.pages[-1]

    def new_page(self) -> None:
        self.pages.append(_Page())

    def text(
        self,
        x: float,
        y: float,
        text: str,
        *,
        size: float = 9.0,
        bold: bool = False,
        colour: tuple[float, float, float] = (0.11, 0.11, 0.11),
    ) -> None:
        """One line of text with its baseline at ``y``."""
        name = FONTS["bold" if bold else "regular"][0]
        r, g, b = colour
        self.page.commands.append(
            b"BT %.3f %.3f %.3f rg /%s %.2f Tf %.2f %.2f Td (%s) Tj ET"
            % (r, g, b, name.encode(), size, x, y, _encode(text))
        )

    def rectangle(
        self,
        x: float,
        y: float,
        width: float,
        height: float,
        *,
        fill: tuple[float, float, float] | None = None,
        stroke: tuple[float, float, float] | None = None,
        line_width: float = 0.6,
    ) -> None:
        """A rectangle from its bottom-left corner, filled and/or outlined."""
        ops = []
        if fill is not None:
            ops.append(b"%.3f %.3f %.3f rg" % fill)
        if stroke is not None:
            ops.append(b"%.3f %.3f %.3f RG %.2f w" % (*stroke, line_width))
        paint = b"B" if fill is not None and stroke is not None else b"f" if fill else b"S"
        ops.append(b"%.2f %.2f %.2f %.2f re %s" % (x, y, width, height, paint))
        self.page.commands.append(b" ".join(ops))

    def image(self, png: PngImage, x: float, y: float, width: float, height: float) -> None:
        """A PNG placed with its bottom-left corner at ``(x, y)``, scaled to the box."""
        self.images.append(png)
        name = f"Im{len(self.images)}"
        self.page.images[name] = len(self.images) - 1
        self.page.commands.append(
            b"q %.2f 0 0 %.2f %.2f %.2f cm /%s Do Q" % (width, height, x, y, name.encode())
        )

    def to_bytes(self) -> bytes:
        """The PDF file (version 1.4)."""
        objects: list[bytes] = []

        def add(body: bytes) -> int:
            objects.append(body)
            return len(objects)

        fonts = {
            key: add(
                b"<< /Type /Font /Subtype /Type1 /BaseFont /%s /Encoding /WinAnsiEncoding >>"
                % base.encode()
            )
            for key, base in FONTS.values()
        }
        image_ids = [add(_image_object(png)) for png in self.images]
        pages_id = len(objects) + 2 * len(self.pages) + 1
        page_ids = []
        for page in self.pages:
            content = zlib.compress(b"\n".join(page.commands), 6)
            stream = add(
                b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream"
                % (len(content), content)
            )
            xobjects = b" ".join(
                b"/%s %d 0 R" % (name.encode(), image_ids[index])
                for name, index in page.images.items()
            )
            font_refs = b" ".join(b"/%s %d 0 R" % (k.encode(), v) for k, v in fonts.items())
            page_ids.append(
                add(
                    b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %.2f %.2f] /Contents %d 0 R "
                    b"/Resources << /Font << %s >> /XObject << %s >> >> >>"
                    % (pages_id, PAGE_WIDTH, PAGE_HEIGHT, stream, font_refs, xobjects)
                )
            )
        kids = b" ".join(b"%d 0 R" % p for p in page_ids)
        assert add(b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(page_ids))) == pages_id
        catalog = add(b"<< /Type /Catalog /Pages %d 0 R >>" % pages_id)
        info = add(b"<< /Title (%s) /Producer (medres) >>" % _encode(self.title))
        out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
        offsets = []
        for number, body in enumerate(objects, start=1):
            offsets.append(len(out))
            out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
        xref = len(out)
        out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
        out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
        out += b"trailer\n<< /Size %d /Root %d 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
            len(objects) + 1,
            catalog,
            info,
            xref,
        )
        return bytes(out)


def _image_object(png: PngImage) -> bytes:
    space = b"/DeviceRGB" if png.colours == 3 else b"/DeviceGray"
    return (
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace %s "
        b"/BitsPerComponent 8 /Filter /FlateDecode /DecodeParms << /Predictor 15 /Colors %d "
        b"/BitsPerComponent 8 /Columns %d >> /Length %d >>\nstream\n%s\nendstream"
        % (png.width, png.height, space, png.colours, png.width, len(png.data), png.data)
    )


__all__ = [
    "PAGE_HEIGHT",
    "PAGE_WIDTH",
    "PdfWriter",
    "PngImage",
    "clean_text",
    "png_image",
    "text_width",
    "wrap",
]
