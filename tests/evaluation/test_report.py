import json

from gpthf.data.special_tokens import EOS_ID
from gpthf.evaluation.sanity import generation_sanity
from tests.conftest import run_script


def test_generation_sanity_counts_closed_sentences_and_repetition():
    samples = [[10, 11, EOS_ID, 12, 12, 12, 12, EOS_ID, 13], [10, 11, EOS_ID]]
    sanity = generation_sanity(samples, max_sentence_len=5)
    assert sanity["sentences"] == 4  # the unfinished tail counts, as not closed
    assert sanity["closed_share"] == 2 / 4  # the 5-token one was forced closed at the limit
    assert sanity["distinct_n"]["1"] == 4 / 9


def test_perplexity_then_report_over_both_runs(trained_runs, tmp_path):
    for run in trained_runs.values():
        done = run_script(
            "eval/perplexity.py", "--ckpt", str(run), "--max-rows", "8", "--samples", "2", timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert (run / "eval" / "perplexity-test.json").is_file()
    report = run_script(
        "eval/report.py", *map(str, trained_runs.values()), "--out", str(tmp_path), timeout=120
    )
    assert report.returncode == 0, report.stderr[-2000:]
    rows = json.loads(report.stdout.strip().splitlines()[-1])
    assert [r["model"] for r in rows] == ["gpthf", "gpt"]
    assert all(r["test_bpb"] > 0 and r["val_bpb"] > 0 and 0 <= r["closed_share"] <= 1 for r in rows)
    assert (tmp_path / "report.png").stat().st_size > 0
    bad = run_script("eval/report.py", str(tmp_path), timeout=60)
    assert bad.returncode == 2 and "no finished training record" in bad.stderr
