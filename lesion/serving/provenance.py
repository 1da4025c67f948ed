"""What a checkpoint records of the data it learnt from, in the model card's sentences: each source's dataset, modality
and population (its data config's `provenance` block), and the limits that follow. Nothing is said of a dataset the
checkpoint does not name."""

from __future__ import annotations

from pathlib import Path


def training_sources(data: dict | None) -> list[tuple[str, dict]]:
    """(name, provenance) of each source a model trained on, as its checkpoint's data config records them: the
    `dataset`, `modality` and `population` of its data config's `provenance` block (a multi-source run's own
    `modality` of a source first). Nothing is assumed of a dataset the checkpoint does not name."""
    data = dict(data or {})
    if data.get("name") == "multi":
        blocks = {key: block for key, block in (data.get("sources") or {}).items() if block is not None}
    else:
        blocks = {data.get("name") or "unknown": data}
    sources = []
    for key, block in blocks.items():
        provenance = {k: v for k, v in (block.get("provenance") or {}).items() if v}
        if block.get("modality"):
            provenance["modality"] = block["modality"]
        sources.append((key, provenance))
    return sources


def source_line(key: str, provenance: dict) -> str:
    unknown = "not recorded (data.provenance)"
    return (
        f"`{key}`: {provenance.get('dataset', 'dataset ' + unknown)}; modality: {provenance.get('modality', unknown)};"
        f" who is in it: {provenance.get('population', unknown)}"
    )


def modality_scope(sources: list[tuple[str, dict]]) -> str:
    """The out-of-scope sentence on image kinds, from the modalities the sources record."""
    modalities = [p.get("modality") for _, p in sources]
    if modalities and all(m == "not skin" for m in modalities):
        return "- Any use on people: this model never saw skin (its data is a sanity check of the pipeline)."
    unrecorded = [key for key, p in sources if not p.get("modality")]
    if unrecorded:
        return (
            f"- Images unlike its training images: the modality of {', '.join(f'`{k}`' for k in unrecorded)} is not "
            "recorded (data.provenance.modality), so which kinds of photo it has seen is unknown."
        )
    seen = sorted(set(modalities))
    other = "phone and clinical photos" if seen == ["dermoscopy"] else "photos from other cameras and settings"
    return (
        f"- Images of a kind it was not trained on: it saw {' and '.join(seen)} images only; {other} differ "
        "in light, focus and framing."
    )


def population_limits(sources: list[tuple[str, dict]]) -> str:
    lines = []
    for key, provenance in sources:
        if provenance.get("population"):
            lines.append(f"- Who the training data holds (`{key}`): {provenance['population']}.")
        else:
            lines.append(
                f"- Nothing is recorded of who is in `{key}` (data.provenance.population): its skin tones, ages and "
                "sites are unknown, so how the model serves any group of people is unknown."
            )
    return "\n".join(lines)


def test_limit(adaptation: dict | None, eval_dir: Path | None, sources: int) -> str:
    if adaptation and not eval_dir:
        return (
            "Test metrics come from the site's own local test part (few photos: see the CIs); another site, camera or "
            "population can differ."
        )
    collection = "collections" if sources > 1 else "collection"
    return (
        f"Test metrics come from a split of the same {collection} as the training data: they overstate performance "
        "on new clinics, cameras and populations (see the external sets)."
    )
