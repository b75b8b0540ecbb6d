"""Files a researcher expects beside the code: a citation file that tools (GitHub, Zenodo) can read."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_citation_cff_names_the_software_and_the_paper():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert {"title", "authors", "license", "version", "message"} <= set(cff)
    from ilf import __version__

    assert cff["version"] == __version__
    paper = cff["references"][0]
    assert "Natural Language Feedback" in paper["title"] and paper["year"] == 2023
    assert [a["family-names"] for a in paper["authors"]][:2] == ["Chen", "Scheurer"]
