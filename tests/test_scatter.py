"""The scatter step: contiguous, order-preserving parts of a JSONL file."""

import json

from electra_ds.cli import main
from electra_ds.data.scatter import split_lines


def test_parts_are_contiguous_balanced_and_complete(tmp_path):
    src = tmp_path / "docs.jsonl"
    lines = [json.dumps({"id": str(i), "text": f"document {i}"}) for i in range(10)]
    src.write_text("\n".join(lines[:5]) + "\n\n" + "\n".join(lines[5:]))  # a blank line, no final newline
    outs = [tmp_path / f"p{i}.jsonl" for i in range(3)]
    assert split_lines(src, outs) == [4, 3, 3]
    assert "".join(p.read_text() for p in outs) == "".join(line + "\n" for line in lines)


def test_empty_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    src = tmp_path / "empty.jsonl"
    src.write_text("\n")
    assert main(["scatter", "--input", str(src), "--outputs", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "empty.jsonl: has no documents to split" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
