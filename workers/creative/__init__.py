"""Brand-kit overlays: logo, headline, CTA and legal text laid out on a scene, drawn (never diffused),
with measured WCAG contrast and an OCR read-back (see ``render.render`` and ``verify.verify``)."""
