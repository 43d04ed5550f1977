"""Redaction cost per MB on long single lines, ordinary and adversarial (no trailing newline).

The defect this tracks: redaction was quadratic in line length (0.7 s for 28 KB, 45 s for 224 KB).
Each row redacts one line of the given size with the bot's Redactor (a known HF token set) and
prints seconds and seconds per MB; a linear redactor shows a flat s/MB column across sizes. It also
times ``/logs``'s whole pipeline (line assembly then redaction) on a 1.28 MB window.
Run: .venv/bin/python -m bench.bench_redact   (takes about a minute)
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bot.watch.logtail import lines_from_bytes
from bot.watch.redact import Redactor

SIZES = (28_000, 224_000, 1_280_000)
HF = "hf_" + "FakeTokenForTheBenchmark0123456789"

# Each shape is a repeating unit; the line is the unit repeated up to the size.
SHAPES: dict[str, str] = {
    "pip output": "Requirement already satisfied: torch in /venv/lib/python3.12/site-packages (2.4.1) ",
    "URLs without signature": "https://example.com/a?b=c&d=e ",
    "one URL, many params": "https://example.com/f?x=1&se=2&sp=r&sv=3",
    "key=value pairs": "TOKENIZERS=1 MODEL_PATH=/x ",
    "one long identifier": "TOKEN_SECRET_PASSWORD_",
    "quotes never closed": 'PASSWORD="a ',
    "eyJ runs": "eyJabc.",
    "header-ish": "x-api-x-token-x-",
    "BEGIN without END": "-----BEGIN RSA PRIVATE KEY----- ",
    "known token and hf_": f"{HF} hf_ ",
    "base64 blob": "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0123456789+/",
}


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    redactor = Redactor({"HF_TOKEN": HF})
    print(f"{'shape':<26}" + "".join(f"{f'{n // 1000} KB':>18}" for n in SIZES) + "   (seconds, s/MB)")
    worst = 0.0
    for name, unit in SHAPES.items():
        cells = []
        for size in SIZES:
            line = (unit * (size // len(unit) + 1))[:size]
            seconds = timed(lambda line=line: redactor.redact(line))
            per_mb = seconds / (size / 1e6)
            worst = max(worst, per_mb)
            cells.append(f"{seconds:7.3f} {per_mb:6.2f}/MB")
        print(f"{name:<26}" + "".join(f"{c:>18}" for c in cells))
    window = ("".join(f"{i:05d} " + SHAPES['pip output'] * 2 + "\n" for i in range(7000))).encode()[:1_280_000]
    seconds = timed(lambda: lines_from_bytes(window, redactor, mid_file=True))
    print(f"\n/logs pipeline (assemble + redact) on a {len(window) / 1e6:.2f} MB window: {seconds:.3f} s")
    print(f"worst redaction cost: {worst:.2f} s per MB")


if __name__ == "__main__":
    main()
