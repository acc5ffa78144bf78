"""Opt-in removal of technical variation from Nightingale NMR values, after Ritchie et al. 2023.

Method: Ritchie S. C. et al., "Quality control and removal of technical variation of NMR metabolic
biomarker data in ~120,000 UK Biobank participants", Sci Data 10:64 (2023), doi:10.1038/s41597-023-01949-y,
whose steps (version 1 of the ``ukbnmr`` R package's ``remove_technical_variation``) are followed here in
DuckDB SQL over all biomarkers at once (Mercia's own implementation; no ukbnmr code):

1. only the measured (non-derived) biomarkers are adjusted;
2. log transform, with an offset of half the smallest non-zero value for a biomarker that has zeros;
3. remove the linear effect of the time between sample preparation and measurement (hours);
4. remove systematic differences between plate rows (A-H), then 5. plate columns (1-12);
6. remove drift within each spectrometer: its plates, ordered by the day they were measured, are split
   into ``DRIFT_BINS`` bins and each bin's difference from the biomarker's mean is removed;
7. back-transform, then re-derive every composite, ratio and percentage from the adjusted values.

Each adjustment subtracts the group's (or the regression's) difference from the biomarker's mean, so
the mean level stays in the catalogue's units.  Differences from the paper, stated: ordinary least
squares and means instead of its robust fits, and no outlier-plate removal.  A sample without a
covariate (no well position, no dates) is left unadjusted for that step.
"""

from __future__ import annotations

import duckdb

DRIFT_BINS = 10
ADJUSTED = "Ritchie 2023 v1: log, time, row, column, drift"  # the observation text (<= 50 characters)


def remove_technical_variation(con: duckdb.DuckDBPyConnection, measured: list[str]) -> None:
    """Adjust ``vals`` (sample_id, biomarker, value) in place for the ``measured`` biomarkers, using the
    sample covariates in ``sample_qc`` (sample_id, name, value: ``sample_qc_info.csv`` names)."""
    names = ", ".join("'" + m.replace("'", "''") + "'" for m in measured)
    con.execute("""CREATE OR REPLACE TABLE tv_samples AS
        SELECT sample_id,
               upper(left(trim(max(value) FILTER (WHERE name = 'Well.Position.Within.Plate')), 1)) AS well_row,
               TRY_CAST(substr(trim(max(value) FILTER (WHERE name = 'Well.Position.Within.Plate')), 2) AS INTEGER)
                   AS well_column,
               max(value) FILTER (WHERE name = 'Spectrometer') AS spectrometer,
               max(value) FILTER (WHERE name = 'Shipment.Plate') AS plate,
               TRY_CAST(max(value) FILTER (WHERE name = 'Sample.Prepared.Date.and.Time') AS TIMESTAMP) AS prepared,
               TRY_CAST(max(value) FILTER (WHERE name = 'Sample.Measured.Date.and.Time') AS TIMESTAMP) AS measured
        FROM sample_qc GROUP BY sample_id""")
    con.execute(f"""CREATE OR REPLACE TABLE tv_bins AS
        SELECT spectrometer, plate, ntile({DRIFT_BINS}) OVER (PARTITION BY spectrometer ORDER BY day, plate) AS bin
        FROM (SELECT spectrometer, plate, min(CAST(measured AS DATE)) AS day FROM tv_samples
              WHERE spectrometer IS NOT NULL AND plate IS NOT NULL AND measured IS NOT NULL GROUP BY ALL)""")
    con.execute(f"""CREATE OR REPLACE TABLE tv AS
        WITH offsets AS (SELECT biomarker, CASE WHEN min(value) = 0 THEN min(value) FILTER (WHERE value > 0) / 2
                                                ELSE 0 END AS shift
                         FROM vals WHERE biomarker IN ({names}) AND value >= 0 GROUP BY biomarker)
        SELECT v.sample_id, v.biomarker, o.shift, ln(v.value + o.shift) AS x,
               date_diff('second', s.prepared, s.measured) / 3600.0 AS hours, s.well_row, s.well_column,
               s.spectrometer || '/' || b.bin AS drift_bin
        FROM vals v JOIN offsets o USING (biomarker) LEFT JOIN tv_samples s USING (sample_id)
        LEFT JOIN tv_bins b ON b.spectrometer = s.spectrometer AND b.plate = s.plate
        WHERE v.value + o.shift > 0""")
    con.execute("""UPDATE tv SET x = tv.x - f.slope * (tv.hours - f.mean_hours)
                   FROM (SELECT biomarker, regr_slope(x, hours) AS slope, avg(hours) AS mean_hours FROM tv
                         WHERE hours IS NOT NULL GROUP BY biomarker) f
                   WHERE tv.biomarker = f.biomarker AND tv.hours IS NOT NULL AND f.slope IS NOT NULL""")
    for column in ("well_row", "well_column", "drift_bin"):
        con.execute(f"""CREATE OR REPLACE TABLE tv_effect AS
            SELECT biomarker, {column} AS level, avg(x) - any_value(overall) AS effect
            FROM tv JOIN (SELECT biomarker, avg(x) AS overall FROM tv WHERE {column} IS NOT NULL GROUP BY 1)
                 USING (biomarker)
            WHERE {column} IS NOT NULL GROUP BY 1, 2""")
        con.execute(f"""UPDATE tv SET x = tv.x - e.effect FROM tv_effect e
                        WHERE tv.biomarker = e.biomarker AND tv.{column} = e.level""")
    con.execute("""UPDATE vals SET value = exp(tv.x) - tv.shift FROM tv
                   WHERE vals.sample_id = tv.sample_id AND vals.biomarker = tv.biomarker""")
    for table in ("tv", "tv_effect", "tv_bins", "tv_samples"):
        con.execute(f"DROP TABLE {table}")
