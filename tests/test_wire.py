"""The committed generated code matches proto/."""
import pathlib

from proto.generate import generate

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_generated_code_matches_the_proto(tmp_path):
    """Regenerating fleet/v1 from proto/ with grpcio-tools changes nothing."""
    generate(tmp_path)
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert made, "protoc produced nothing"
    for relative in made:
        committed = REPO / relative
        assert committed.exists(), f"{relative} is not committed"
        assert committed.read_bytes() == (tmp_path / relative).read_bytes(), \
            f"{relative} differs from proto/: run python proto/generate.py"
