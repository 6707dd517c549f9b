"""rrsr_lib.paper_tables: the main comparison table of notebook 09, from benchmark rows to .md and .csv."""
import csv
import json
from pathlib import Path

import pytest

from rrsr_lib.paper_tables import (FIELDS, main_table_cells, main_table_csv, main_table_markdown, main_table_rows,
                                   write_main_table)

ROOT = Path(__file__).resolve().parent.parent


def _row(model, reciprocal, seed, psnr, ssim=0.5, metric="y_crop4", config="small"):
    return {"model": model, "config": "-" if model == "bicubic" else config, "reciprocal": reciprocal, "seed": seed,
            "metric": metric, "psnr_y": psnr, "ssim_y": ssim, "protocol": "toy protocol"}


ROWS = [_row("bicubic", None, None, 24.0, 0.6),
        _row("sisr", False, 0, 23.5, 0.55), _row("sisr", True, 0, 23.75, 0.56),
        _row("rrsr", False, 0, 24.25), _row("rrsr", False, 1, 24.75),
        _row("rrsr", True, 0, 25.0), _row("rrsr", True, 1, 25.5)]


def _by_model(table_rows):
    return {r["model"]: r for r in table_rows}


def test_there_is_one_row_per_model_in_the_given_order_with_the_fields_in_order():
    table_rows = main_table_rows(ROWS, models=("rrsr", "bicubic", "sisr"))
    assert [r["model"] for r in table_rows] == ["rrsr", "bicubic", "sisr"]
    assert all(list(r) == FIELDS for r in table_rows)


def test_a_model_without_rows_reads_a_dash_and_has_no_gain():
    c2 = _by_model(main_table_rows(ROWS))["c2"]
    assert c2["plain_psnr"] is None and c2["rec_ssim"] is None and c2["plain_seeds"] == ""
    model, plain, rec, gain, _ = next(c for c in main_table_cells(main_table_rows(ROWS)) if c[0] == "c2")
    assert (plain, rec, gain) == ("- / -", "- / -", "")


def test_a_model_with_only_one_reciprocal_setting_has_no_gain():
    rows = [r for r in ROWS if not (r["model"] == "sisr" and r["reciprocal"])]
    cells = {c[0]: c for c in main_table_cells(main_table_rows(rows))}
    assert cells["sisr"][2] == "- / -" and cells["sisr"][3] == ""


def test_the_gain_column_is_the_mean_with_minus_the_mean_without_reciprocal_learning():
    cells = {c[0]: c for c in main_table_cells(main_table_rows(ROWS))}
    assert cells["sisr"][3] == "+0.25"          # 23.75 - 23.5
    assert cells["rrsr"][3] == "+0.75"          # mean(25.0, 25.5) - mean(24.25, 24.75)
    worse = [_row("ttsr", False, 0, 24.0), _row("ttsr", True, 0, 23.9)]
    assert {c[0]: c for c in main_table_cells(main_table_rows(worse))}["ttsr"][3] == "-0.10"


def test_mean_and_spread_are_over_the_per_seed_means_and_a_single_seed_shows_no_spread():
    rrsr = _by_model(main_table_rows(ROWS))["rrsr"]
    assert rrsr["rec_psnr"] == pytest.approx(25.25) and rrsr["rec_std"] == pytest.approx(0.25)   # population std
    assert rrsr["rec_seeds"] == "0 1"
    cells = {c[0]: c for c in main_table_cells(main_table_rows(ROWS))}
    assert cells["rrsr"][2] == "25.25 ± 0.25 / 0.5000" and cells["rrsr"][4] == "0 1 / 0 1"
    assert cells["sisr"][1] == "23.50 / 0.5500"


def test_bicubic_has_one_line_without_a_reciprocal_setting():
    bicubic = main_table_cells(main_table_rows(ROWS))[0]
    assert bicubic == ["bicubic", "24.00 / 0.6000", "", "", "-"]


def test_only_the_y_crop4_rows_of_the_chosen_configurations_count():
    noise = [_row("sisr", False, 0, 99.0, metric="y_crop0"), _row("sisr", False, 1, 99.0, config="paper")]
    assert main_table_rows(ROWS + noise) == main_table_rows(ROWS)
    assert _by_model(main_table_rows(ROWS + noise, configs=("paper",)))["sisr"]["plain_psnr"] == 99.0


def test_the_markdown_has_a_header_one_line_per_model_and_the_protocol_line():
    markdown = main_table_markdown(main_table_rows(ROWS), "toy protocol")
    lines = markdown.split("\n")
    assert lines[0].startswith("| model | PSNR_Y / SSIM_Y, without reciprocal |") and lines[1] == "|---|---|---|---|---|"
    assert lines[2] == "| bicubic | 24.00 / 0.6000 |  |  | - |"
    assert [ln.split(" | ")[0] for ln in lines[2:7]] == ["| bicubic", "| sisr", "| c2", "| ttsr", "| rrsr"]
    assert markdown.endswith("\n\nProtocol: toy protocol; metric y_crop4 (Y channel, 4-pixel border removed).\n")


def test_the_csv_round_trips_to_the_table_rows(tmp_path):
    table_rows = main_table_rows(ROWS)
    md_path, csv_path = write_main_table(table_rows, "toy protocol", tmp_path, name="table")
    assert md_path.read_text(encoding="utf-8") == main_table_markdown(table_rows, "toy protocol")
    assert csv_path.read_bytes() == main_table_csv(table_rows).encode("utf-8")
    with open(csv_path, newline="") as f:
        back = list(csv.DictReader(f))
    assert [list(r) for r in back] == [FIELDS] * len(table_rows)
    for read, row in zip(back, table_rows):
        for key in FIELDS:
            value = row[key]
            if isinstance(value, float):
                assert float(read[key]) == value     # written with repr: no digit lost
            else:
                assert read[key] == ("" if value is None else value)


def test_writing_leaves_no_temporary_file_and_csv_lines_end_in_crlf(tmp_path):
    write_main_table(main_table_rows(ROWS), "toy protocol", tmp_path / "new")
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["09_main_table.csv", "09_main_table.md"]
    data = (tmp_path / "new" / "09_main_table.csv").read_bytes()
    assert data.count(b"\r\n") == 1 + 5 and data.endswith(b"\r\n")


def test_the_committed_main_table_is_the_one_built_from_the_committed_benchmark():
    bench_path, md_path = ROOT / "results" / "embedded_benchmark.json", ROOT / "results" / "09_main_table.md"
    if not (bench_path.is_file() and md_path.is_file()):
        pytest.skip("results/embedded_benchmark.json or results/09_main_table.md is not there")
    bench = json.loads(bench_path.read_text())
    protocol = next(r["protocol"] for r in bench if r["metric"] == "y_crop4" and r["config"] in ("-", "small"))
    assert main_table_markdown(main_table_rows(bench), protocol) == md_path.read_text(encoding="utf-8"), \
        "results/09_main_table.md is stale: run notebook 09"
