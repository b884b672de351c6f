"""Write ``gapminder_continents.csv`` from the Gapminder table that plotly ships (no download).

Run from the repository root: ``.venv/bin/python studies/data/make_gapminder_continents.py``.
The output is deterministic (the gaps come from a seeded generator); README.md in this folder
says where the data comes from and what was changed.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

#: Columns kept, in order: the country (an id, dropped by the study), the target, the features.
COLUMNS = ["country", "continent", "year", "lifeExp", "pop", "gdpPercap"]
#: Share of the cells of each feature column blanked out, and the generator's seed.
MISSING_RATE = 0.08
SEED = 0
OUT = Path(__file__).with_name("gapminder_continents.csv")


def main() -> None:
    source = files("plotly") / "package_data" / "datasets" / "gapminder.csv.gz"
    with source.open("rb") as raw:
        df = pd.read_csv(raw, compression="gzip")[COLUMNS]
    rng = np.random.default_rng(SEED)
    for column in ("year", "lifeExp", "pop", "gdpPercap"):
        # Each feature cell independently, so a row may miss several values (or none).
        gaps = rng.random(len(df)) < MISSING_RATE
        df[column] = df[column].astype("object").where(~gaps, None)
    df.to_csv(OUT, index=False)
    print(f"{OUT}: {len(df)} rows, {int(df.isna().sum().sum())} missing values")


if __name__ == "__main__":
    main()
