"""Black list of AudioSet clips that overlap the DCASE 2017 task 4 test/evaluation sets (official script).

    python3 utils/create_black_list.py dcase2017task4 --workspace=WS [--black_list_dir=metadata/black_list]

Reads ``groundtruth_weak_label_testing_set.csv`` and ``groundtruth_weak_label_evaluation_set.csv`` (tab
separated, first column ``<YTID>_<start>_<end>.wav``) and writes one YTID per line to
``<workspace>/black_list/dcase2017task4.csv`` (the format ``data_generator.read_black_list`` reads).
Those two CSVs ship with the official repository, not with this one: when they are missing the command
says so and exits successfully without writing anything, so ``scripts/3_create_training_indexes.sh``
still completes. Fixed against the official code: YTIDs keep their first-seen order (official: set
order, different every run), inputs are found relative to the repository, the output is written
atomically.
"""
from __future__ import annotations

import argparse
import os
from typing import List, Optional, Sequence

from panns import config
from panns.errors import PannsError, run_cli
from panns.utilities import atomic_write_text, check_output_path

DEFAULT_BLACK_LIST_DIR = os.path.join(config.REPO_ROOT, "metadata", "black_list")
DCASE2017_FILES = ("groundtruth_weak_label_testing_set.csv", "groundtruth_weak_label_evaluation_set.csv")
YTID_LEN = 11


_YTID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _ytids(path: str) -> List[str]:
    seen, out = set(), []
    try:
        with open(path, encoding="utf-8-sig") as f:   # -sig: a spreadsheet's BOM is not part of the first id
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                first = line.split("\t")[0].strip()
                ytid = first[:YTID_LEN]
                # <YTID>_<start>_<end>.wav: a 'Y' prefix or another layout would black-list wrong ids silently
                if len(first) <= YTID_LEN or first[YTID_LEN] != "_" or not set(ytid) <= _YTID_CHARS:
                    raise PannsError(f"{path} line {n}: expected '<YTID>_<start>_<end>.wav<TAB>...', "
                                     f"got {line[:60]!r}")
                if ytid not in seen:
                    seen.add(ytid)
                    out.append(ytid)
    except UnicodeDecodeError as e:
        raise PannsError(f"{path} is not a UTF-8 text file (byte {e.start}: {e.reason}); "
                         "expected the DCASE 2017 task 4 ground-truth CSV") from None
    if not out:   # an empty (cut-off) download would black-list nothing, silently
        raise PannsError(f"{path} lists no clips; expected the DCASE 2017 task 4 ground-truth CSV "
                         "('<YTID>_<start>_<end>.wav<TAB>...' lines)")
    return out


def dcase2017task4(workspace: str, black_list_dir: str = DEFAULT_BLACK_LIST_DIR) -> Optional[str]:
    """Write the black list; returns its path, or None (with a message) when the inputs are missing."""
    inputs = [os.path.join(black_list_dir, name) for name in DCASE2017_FILES]
    missing = [p for p in inputs if not os.path.isfile(p)]
    if missing:
        print(f"Skip black list: DCASE 2017 task 4 label CSVs not found ({', '.join(missing)}). They come with the "
              "official repository (metadata/black_list/); training works without a black list.")
        return None
    out = os.path.join(workspace, "black_list", "dcase2017task4.csv")
    check_output_path(out, inputs, "black list")   # a folder there, or a workspace that is a file: one line
    ytids: List[str] = []
    for path in inputs:  # testing set first, then evaluation set (official order); no cross-file de-dup
        ytids.extend(_ytids(path))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    atomic_write_text(out, "".join(y + "\n" for y in ytids))
    print(f"Write black list to {out}")
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode")
    p = sub.add_parser("dcase2017task4", help="black-list clips of the DCASE 2017 task 4 test/evaluation sets")
    p.add_argument("--workspace", type=str, required=True, help="workspace; output goes to <ws>/black_list/")
    p.add_argument("--black_list_dir", type=str, default=DEFAULT_BLACK_LIST_DIR,
                   help="folder holding the two DCASE 2017 task 4 ground-truth CSVs")
    args = parser.parse_args(argv)
    if args.mode == "dcase2017task4":
        dcase2017task4(args.workspace, args.black_list_dir)
    else:
        parser.error("choose a sub-command: dcase2017task4")


if __name__ == "__main__":
    run_cli(main)
