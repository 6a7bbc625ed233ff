"""The self-contained HTML report of one conversation: the turns, and after each answer a
snapshot of its overlays (PGDFC regions numbered by rank, boxes, masks) drawn on the slide's
thumbnail. Images are inlined as JPEG data URIs, so the file opens anywhere, offline.

Shapes come from storage.export.turn_overlays (the same names and colours as the GeoJSON), in
level-0 pixels; they are scaled to the thumbnail here (`thumb_` = thumbnail pixels).
"""

from __future__ import annotations

import base64
import html
import io
from datetime import UTC, datetime
from typing import Any

from PIL import Image, ImageDraw

from storage.export import turn_overlays
from web.messages import answer_notes

REPORT_THUMBNAIL_SIDE = 1024
_NO_SLIDE_COLOUR = (235, 235, 235)

_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 980px; margin: 2em auto; color: #222; }
header { border-bottom: 1px solid #ccc; margin-bottom: 1em; }
.banner { background: #fff4d6; border: 1px solid #e5c56a; padding: .4em .8em; border-radius: 4px; }
.turn { margin: 1em 0; padding: .6em .9em; border-radius: 6px; white-space: pre-wrap; }
.user { background: #eef3fb; } .assistant { background: #f6f6f6; }
.error { color: #a00; } figure { margin: .6em 0 1.4em; } figure img { max-width: 100%;
border: 1px solid #ccc; } figcaption { font-size: 13px; color: #555; }
table.meta td { padding: 0 .8em 0 0; font-size: 13px; color: #444; }
.key span { display: inline-block; margin-right: 1em; }
"""


def _data_uri(image: Image.Image) -> str:
    # JPEG: a snapshot is a photo-like thumbnail; PNG would make the report ~10× larger.
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _canvas(thumbnail: Image.Image | None, l0_width: int, l0_height: int) -> Image.Image:
    """The slide thumbnail (RGB), or a grey stand-in of the slide's shape when it is gone."""
    if thumbnail is not None:
        return thumbnail.convert("RGB")
    scale = REPORT_THUMBNAIL_SIDE / max(l0_width, l0_height)
    size = (max(1, round(l0_width * scale)), max(1, round(l0_height * scale)))
    return Image.new("RGB", size, _NO_SLIDE_COLOUR)


def snapshot(
    turn: dict[str, Any],
    thumbnail: Image.Image | None,
    l0_width: int,
    l0_height: int,
    *,
    answer_number: int | None = None,
) -> Image.Image:
    """One answer's overlays drawn on the slide thumbnail (RGB). Regions are dashed-looking
    orange outlines with their rank, boxes blue outlines with their number, masks filled
    translucent magenta."""
    base = _canvas(thumbnail, l0_width, l0_height)
    thumb_per_l0_x = base.width / l0_width
    thumb_per_l0_y = base.height / l0_height
    fill_layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    fill = ImageDraw.Draw(fill_layer)
    overlays = turn_overlays(turn, l0_width, l0_height, answer_number=answer_number)

    def to_thumb(ring: list[list[float]]) -> list[tuple[float, float]]:
        return [(x * thumb_per_l0_x, y * thumb_per_l0_y) for x, y in ring]

    for item in overlays:
        if item["kind"] == "mask":
            for polygon in item["polygons"]:
                fill.polygon(to_thumb(polygon[0]), fill=(*item["color"], 110))
                for hole in polygon[1:]:
                    fill.polygon(to_thumb(hole), fill=(0, 0, 0, 0))
    image = Image.alpha_composite(base.convert("RGBA"), fill_layer).convert("RGB")
    draw = ImageDraw.Draw(image)
    box_number = 0
    for item in overlays:
        colour = tuple(item["color"])
        for polygon in item["polygons"]:
            draw.line(to_thumb(polygon[0]), fill=colour, width=2)
        if item["kind"] in ("region", "box"):
            if item["kind"] == "box":
                box_number += 1
            number = item["details"]["rank"] if item["kind"] == "region" else box_number
            x, y = to_thumb(item["polygons"][0][0])[0]
            draw.rectangle((x, y, x + 14, y + 12), fill=colour)
            draw.text((x + 2, y), str(number), fill=(255, 255, 255))
    return image


def _turn_html(turn: dict[str, Any]) -> str:
    role = "You" if turn["role"] == "user" else "OmniPath"
    parts = [f'<div class="turn {turn["role"]}"><b>{role}:</b> {html.escape(turn["text"])}']
    region = (turn.get("meta") or {}).get("l0_region")
    if region:
        parts.append(
            f"<br><i>About the region x {region[0]}, y {region[1]}, "
            f"{region[2]}×{region[3]} level-0 pixels.</i>"
        )
    notes = answer_notes(turn) if turn["role"] == "assistant" else []
    if notes:
        parts.append(f'<br><span class="error">⚠ {html.escape("; ".join(notes))}</span>')
    parts.append("</div>")
    return "".join(parts)


def _answer_facts(turn: dict[str, Any]) -> str:
    tokens = turn.get("tokens") or {}
    timings = turn.get("timings") or {}
    rows = [
        (
            "PGDFC",
            f"{turn.get('pgdfc_mode') or '—'}, S = {turn.get('s') if turn.get('s') is not None else '—'}",
        ),
        ("Regions read", str(len(turn.get("regions") or []))),
        ("Boxes", str(len(turn.get("boxes") or []))),
        ("Masks", str(len(turn.get("masks") or []))),
        ("Tokens generated", str(tokens.get("generated", "—"))),
        ("Time", f"{sum(timings.values()):.2f} s" if timings else "—"),
        ("Model", html.escape(f"{turn.get('model_id') or '—'} {turn.get('revision') or ''}")),
    ]
    cells = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="meta">{cells}</table>'


def conversation_report(
    conversation: dict[str, Any],
    thumbnail: Image.Image | None,
    *,
    model: dict[str, Any] | None = None,
    head: str = "",
    top: str = "",
) -> str:
    """The report as one HTML string. `conversation`: Store.load_conversation()'s dict;
    `thumbnail`: the whole slide (any size, aspect kept) or None when the slide is gone;
    `model`: the banner facts (model_id, precision, device, demo); `head` and `top`: HTML
    added to the <head> and after the header (the share page's viewer, web/share.py)."""
    slide = conversation["slide"]
    l0_width, l0_height = int(slide["width"]), int(slide["height"])
    title = conversation.get("title") or "Conversation"
    body = [
        "<header>",
        f"<h1>OmniPath — {html.escape(title)}</h1>",
        f"<p>Slide {html.escape(slide['id'][:16])}… · {l0_width} × {l0_height} px · "
        f"vendor {html.escape(str(slide.get('vendor')))}"
        + (f" · {slide['mpp_x']:.3f} µm/px" if slide.get("mpp_x") else "")
        + f" · exported {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}</p>",
    ]
    if model:
        demo = " — a demonstration model, not for diagnosis" if model.get("demo") else ""
        body.append(
            f'<p class="banner">Model {html.escape(str(model.get("model_id")))} '
            f"({html.escape(str(model.get('precision')))}, {html.escape(str(model.get('device')))})"
            f"{demo}.</p>"
        )
    body.append(
        '<p class="key"><span style="color:#f90">■ PGDFC regions (numbered by rank)</span>'
        '<span style="color:#09f">■ boxes</span><span style="color:#dc0073">■ masks</span></p>'
        "</header>"
    )
    body.append(top)
    answer_number = 0
    for turn in conversation["turns"]:
        body.append(_turn_html(turn))
        if turn["role"] != "assistant":
            continue
        answer_number += 1
        image = snapshot(turn, thumbnail, l0_width, l0_height, answer_number=answer_number)
        body.append(
            f'<figure><img alt="Answer {answer_number} overlays" src="{_data_uri(image)}">'
            f"<figcaption>Answer {answer_number}: what the model read and drew.</figcaption>"
            f"{_answer_facts(turn)}</figure>"
        )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>OmniPath — {html.escape(title)}</title><style>{_CSS}</style>{head}</head>"
        f"<body>{''.join(body)}</body></html>"
    )
