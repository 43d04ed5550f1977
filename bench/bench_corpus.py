"""Score the log corpus (tests/watch/corpus/): how often the watch engine's analysis is right on logs
written in the real wording of the images people use (ai-dock, Vast's templates, plain scripts).

Prints: logs fully right, findings right, harmless lines flagged (on healthy runs, and overall),
milestones missed, secrets leaked, then one line per log that is not fully right.
Targets (issue 11): >= 90 % of logs fully right, 0 harmless lines flagged at warn or above on
healthy runs, 0 secrets leaked. Exit status 1 when a target is missed.
Run: .venv/bin/python bench/bench_corpus.py   (a second or two)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.watch import corpus_eval


def main() -> int:
    start = time.perf_counter()
    results = corpus_eval.evaluate_all()
    seconds = time.perf_counter() - start
    f = corpus_eval.summary(results)
    pct = 100 * f["fully_right"] / f["logs"] if f["logs"] else 0.0
    print(f"corpus: {f['logs']} logs scored ({f['healthy_logs']} healthy), analysed in {seconds:.2f} s")
    for r in results:
        if r.skipped:
            print(f"  skipped {r.name}: {r.skipped} (this LineAssembler cuts over-long lines at their start)")
    print(f"logs fully right        {f['fully_right']}/{f['logs']} ({pct:.0f} %)   target >= 90 %")
    print(f"findings right          {f['findings_found']}/{f['findings_expected']}")
    print(f"harmless lines flagged  {f['harmless_flagged_healthy']} on healthy runs (target 0), "
          f"{f['harmless_flagged']} overall")
    print(f"milestones missed       {f['milestones_missed']} (and {f['milestones_unexpected']} unexpected)")
    print(f"secrets leaked          {f['secrets_leaked']}   target 0")
    wrong = [r for r in results if not r.fully_right and not r.skipped]
    if wrong:
        print("\nnot fully right:")
        for r in wrong:
            print(f"  {r.name} (verdict {r.verdict}): " + "; ".join(p[:200] for p in r.problems))
    ok = pct >= 90 and f["harmless_flagged_healthy"] == 0 and f["secrets_leaked"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
