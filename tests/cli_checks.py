"""Assertions shared by test files (on pytest's path through pyproject's pythonpath = ["tests"])."""
from coarse2fine.cli import main


def one_line_error(capsys, argv, *needles):
    """Run the CLI; it must exit 2 with exactly one line on stderr, no traceback, naming every needle.
    Returns (stdout, stderr)."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2, (argv, out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return out, err
