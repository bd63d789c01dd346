"""The barge-in benchmark's report: a saved run redraws into the same tables and a plot, and the cut-ins that
no canceller can measure (the echo cutting in first) say so instead of showing a number."""

import json

from voxloop.bench.barge_in import CutIn, ReplyAlone, main, summary, write_report


def test_a_saved_run_is_summarised_and_redrawn(tmp_path):
    cut_ins = [CutIn("headphones", 0.1, name, f"clip{i}", heard, delay)
               for i in range(4)
               for name, heard, delay in (("no AEC", True, 10.0 * i), ("AEC3", i > 0, 1000.0 + i if i else None),
                                          ("AEC3 + double talk", True, 400.0 + i))]
    cut_ins += [CutIn("laptop -6 dB", 0.1, name, f"clip{i}", True, 300.0) for i in range(4) for name in ("AEC3", "AEC3 + double talk")]
    alone = [ReplyAlone("laptop -6 dB", name, k, name == "no AEC") for k in range(3) for name in ("no AEC", "AEC3", "AEC3 + double talk")]
    result = summary(cut_ins, alone)
    report = write_report(result, tmp_path / "run")
    assert "| headphones | 0.1 s | 4/4: 15 / 30 | 3/4: 1002 / 1003 | 4/4: 402 / 403 |" in report
    assert "| laptop -6 dB | 0.1 s | (the echo cuts in first) | 4/4: 300 / 300 | 4/4: 300 / 300 |" in report
    assert "| laptop -6 dB | 3/3 | 0/3 | 0/3 |" in report
    assert main(["--from-json", str(tmp_path / "run" / "barge_in.json"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "barge_in.md").read_text() == report
    assert (tmp_path / "again" / "barge_in.png").stat().st_size > 20_000
    assert json.loads((tmp_path / "run" / "barge_in.json").read_text()) == result
