"""Download progress read from what the tools themselves print: aria2c, wget, curl, tqdm
(huggingface_hub), pip and git.

A stall is a byte counter that stops, not a log that stops growing: a heartbeat keeps a file
growing over a dead download, and a slow download can go quiet between two lines. Each parser
turns one line (the last ``\\r`` segment, as the line assembler keeps it) into a
:class:`DownloadProgress`: which transfer, how many bytes so far, of how many. Units follow each
tool: curl, wget and aria2c count in powers of 1024, pip in powers of 1000.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS_1024 = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_UNITS_1000 = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}


@dataclass(frozen=True, slots=True)
class DownloadProgress:
    """One reading of a transfer's byte counter."""

    tool: str  # aria2c | wget | curl | tqdm | pip | git
    key: str  # which transfer (the tool and, when the line says it, the file)
    done: int  # bytes (or objects, for git without a byte count) transferred so far
    total: int | None = None

    @property
    def finished(self) -> bool:
        return self.total is not None and self.total > 0 and self.done >= self.total


def _size(number: str, unit: str, *, base: int = 1024) -> int:
    """``"10.24", "GiB"`` -> bytes; the unit's first letter decides (k/K alike)."""
    table = _UNITS_1024 if base == 1024 else _UNITS_1000
    letter = unit[:1].upper() if unit else ""
    return int(float(number.replace(",", "")) * table.get(letter, 1))


_SIZE = r"(\d+(?:[.,]\d+)?)\s?([KMGTP]?i?B|[kKMGTP])?"

# [#2089b0 400.0MiB/1.0GiB(39%) CN:1 DL:115.7MiB ETA:5s]; older: [#1 SIZE:12.3MiB/1.2GiB(1%) CN:16 SPD:...]
_ARIA2 = re.compile(r"\[#(?P<gid>[0-9a-f]+)\s+(?:SIZE:)?(?P<d>\d+(?:\.\d+)?)(?P<du>[KMGTP]?i?B)"
                    r"/(?P<t>\d+(?:\.\d+)?)(?P<tu>[KMGTP]?i?B)(?:\((?P<pct>\d+)%\))?")
# flux1-dev.safetensors  45%[=======>        ]  10.24G  12.3MB/s    eta 15m 2s
_WGET_BAR = re.compile(r"^(?P<name>\S.*?)\s+(?:(?P<pct>\d+)%)?\[[=> <-]*\]\s+(?P<d>\d+(?:[.,]\d+)*)(?P<du>[KMGT]?)\s+"
                       r"(?:[\d.,]+[KMGT]?B/s|--\.-KB/s)")
#   6400K .......... .......... .......... .......... ..........  0% 1.23M 2h3m
_WGET_DOTS = re.compile(r"^\s*(?P<d>\d+)(?P<du>[KM])\s(?:[. ]{10,})\s+(?P<pct>\d+)%\s")
#  45 6938M   45 3120M    0     0  89.2M      0  0:01:17  0:00:35  0:00:42 91.0M
_CURL = re.compile(r"^\s*(?P<pct>\d{1,3})\s+(?P<t>\d+(?:\.\d+)?)(?P<tu>[kKMGTP]?)\s+\d{1,3}\s+(?P<d>\d+(?:\.\d+)?)"
                   r"(?P<du>[kKMGTP]?)\s+\d{1,3}\s+\d+(?:\.\d+)?[kKMGTP]?\s+\d+(?:\.\d+)?[kKMGTP]?\s+"
                   r"\d+(?:\.\d+)?[kKMGTP]?\s+[\d:-]+\s+[\d:-]+\s+[\d:-]+\s+\d+(?:\.\d+)?[kKMGTP]?\s*$")
# model.safetensors:  43%|████▎     | 10.2G/23.8G [02:31<03:22, 67.3MB/s]
_TQDM = re.compile(r"^(?P<name>.*?):?\s*(?P<pct>\d+)%\|[^|]*\|\s*(?P<d>\d+(?:\.\d+)?)(?P<du>[kKMGTP]?i?B?)"
                   r"/(?P<t>\d+(?:\.\d+)?)(?P<tu>[kKMGTP]?i?B?)\s+\[")
#    ━━━━━━━━━━━━━━━━━━━━╸━━━━━━━━━━━━━━━━━━━ 421.3/888.1 MB 45.2 MB/s eta 0:00:11
_PIP = re.compile(r"^\s*[━╸╺─\-]+\s+(?P<d>\d+(?:\.\d+)?)/(?P<t>\d+(?:\.\d+)?)\s+(?P<u>[kKMG]?B)\s+[\d.]+\s+[kKMG]?B/s")
# Receiving objects:  45% (1234/2741), 12.34 MiB | 5.67 MiB/s
_GIT = re.compile(r"Receiving objects:\s+(?P<pct>\d+)% \((?P<n>\d+)/(?P<of>\d+)\)"
                  r"(?:,\s+(?P<d>\d+(?:\.\d+)?) (?P<du>bytes|KiB|MiB|GiB))?")


def parse_progress(line: str) -> DownloadProgress | None:
    """The transfer progress ``line`` reports, or None if it is not a progress line."""
    text = line.rstrip()
    if not text or len(text) > 400:
        return None
    if "[#" in text and (m := _ARIA2.search(text)):
        return DownloadProgress("aria2c", f"aria2c:{m['gid']}", _size(m["d"], m["du"]), _size(m["t"], m["tu"]))
    if "%|" in text and (m := _TQDM.search(text)):
        base = 1024 if "i" in (m["du"] or "") else 1000
        name = (m["name"] or "").strip() or "download"
        return DownloadProgress("tqdm", f"tqdm:{name}", _size(m["d"], m["du"] or "", base=base),
                                _size(m["t"], m["tu"] or "", base=base))
    if "Receiving objects:" in text and (m := _GIT.search(text)):
        if m["d"]:
            done = _size(m["d"], "" if m["du"] == "bytes" else m["du"])
            return DownloadProgress("git", "git", done)
        return DownloadProgress("git", "git", int(m["n"]), int(m["of"]))
    if "B/s" in text and (m := _PIP.search(text)):
        return DownloadProgress("pip", "pip", _size(m["d"], m["u"], base=1000), _size(m["t"], m["u"], base=1000))
    if "[" in text and (m := _WGET_BAR.search(text)):
        return DownloadProgress("wget", f"wget:{m['name'].strip()}", _size(m["d"], m["du"]))
    if (m := _WGET_DOTS.search(text)) is not None:
        return DownloadProgress("wget", "wget", _size(m["d"], m["du"]))
    if (m := _CURL.search(text)) is not None:
        return DownloadProgress("curl", "curl", _size(m["d"], m["du"]), _size(m["t"], m["tu"]))
    return None
