"""Write docs/config.md, the run config reference, from the config dataclasses."""

from pathlib import Path

from ilf.config import config_reference

out = Path(__file__).resolve().parents[1] / "docs" / "config.md"
out.write_text(config_reference(), encoding="utf-8")
print(f"wrote {out}")
