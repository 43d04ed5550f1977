"""The download-progress parser on the tools' own wording (aria2c, wget, curl, tqdm, pip, git)."""

from __future__ import annotations

import pytest

from bot.watch.progress import parse_progress

MiB, GiB = 1 << 20, 1 << 30


@pytest.mark.parametrize(("line", "tool", "key", "done", "total"), [
    # aria2c's console readout (1.3x), and the older SIZE:/SPD: form
    ("[#2089b0 400.0MiB/1.0GiB(39%) CN:1 DL:115.7MiB ETA:5s]", "aria2c", "aria2c:2089b0", 400 * MiB, GiB),
    ("[#a1b2c3 SIZE:12.0MiB/1.0GiB(1%) CN:16 SPD:5.6MiB/s ETA:3m30s]", "aria2c", "aria2c:a1b2c3", 12 * MiB, GiB),
    # wget's bar (the file name leads) and its dot style (the offset leads)
    ("flux1-dev.safetensors  45%[=======>        ]  10.24G  12.3MB/s    eta 15m 2s", "wget",
     "wget:flux1-dev.safetensors", int(10.24 * GiB), None),
    ("  6400K .......... .......... .......... .......... ..........  0% 1.23M 2h3m", "wget", "wget",
     6400 * 1024, None),
    # curl's default meter: % Total % Received % Xferd Average Speed (Dload Upload) Time... Current
    (" 45 6938M   45 3120M    0     0  89.2M      0  0:01:17  0:00:35  0:00:42 91.0M", "curl", "curl",
     3120 * MiB, 6938 * MiB),
    # huggingface_hub's tqdm bar
    ("model.safetensors:  43%|████▎     | 10.2G/23.8G [02:31<03:22, 67.3MB/s]", "tqdm", "tqdm:model.safetensors",
     10_200_000_000, 23_800_000_000),
    ("Downloading (…)ain/model.safetensors:  12%|█▏        | 105M/860M [00:02<00:15, 49.9MB/s]", "tqdm",
     "tqdm:Downloading (…)ain/model.safetensors", 105_000_000, 860_000_000),
    # pip's rich bar (decimal units)
    ("   ━━━━━━━━━━━━━━━━━━━━╸━━━━━━━━━━━━━━━━━━━ 421.3/888.1 MB 45.2 MB/s eta 0:00:11", "pip", "pip",
     421_300_000, 888_100_000),
    # git clone over HTTPS
    ("Receiving objects:  45% (1234/2741), 12.00 MiB | 5.67 MiB/s", "git", "git", 12 * MiB, None),
    ("Receiving objects: 100% (2741/2741), done.", "git", "git", 2741, 2741),
])
def test_reads_each_tools_progress(line: str, tool: str, key: str, done: int, total: int | None) -> None:
    reading = parse_progress(line)
    assert reading is not None
    assert (reading.tool, reading.key, reading.done, reading.total) == (tool, key, done, total)


@pytest.mark.parametrize("line", [
    "",
    "  % Total    % Received % Xferd  Average Speed   Time    Time     Time  Current",
    "                                 Dload  Upload   Total   Spent    Left  Speed",
    "Successfully installed accelerate-1.2.1 onnxruntime-gpu-1.20.1",
    "Error: remote port forwarding failed for listen port 34656",
    "Cloning into '/workspace/ComfyUI/custom_nodes/ComfyUI-Manager'...",
    "Saving to: 'flux1-dev.safetensors'",
    "Downloading torch-2.8.0+cu128-cp312-cp312-manylinux_2_28_x86_64.whl (888.1 MB)",
    '@@prov {"v":1,"ev":"heartbeat","st":"ok"}',
    "x" * 1000,
])
def test_other_lines_are_not_progress(line: str) -> None:
    assert parse_progress(line) is None


def test_a_finished_transfer_says_so() -> None:
    done = parse_progress("model.safetensors: 100%|██████████| 6.94G/6.94G [01:17<00:00, 89.2MB/s]")
    assert done is not None and done.finished
    going = parse_progress("model.safetensors:  50%|█████     | 3.47G/6.94G [00:38<00:38, 89.2MB/s]")
    assert going is not None and not going.finished
