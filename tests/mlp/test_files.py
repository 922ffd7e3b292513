"""The one atomic file write (mlp.files), as the checkpoint, model, dataset cache and artifact
folder all use it: what their own tests do not pin."""

import os

from mlp.files import TEMPORARY, write_atomically


def test_a_symbolic_link_at_the_path_is_replaced_never_written_through(tmp_path):
    outside = tmp_path / "outside"
    outside.write_bytes(b"someone else's")
    (tmp_path / "store").mkdir()
    target = tmp_path / "store" / "a"
    target.symlink_to(outside)
    write_atomically(target, lambda f: f.write(b"ours"))
    assert outside.read_bytes() == b"someone else's"
    assert not target.is_symlink() and target.read_bytes() == b"ours"
    assert os.listdir(tmp_path / "store") == ["a"]


def test_the_file_gets_the_mode_open_would_give_and_its_temporary_the_declared_form(tmp_path):
    names = []

    def write(f):
        names.extend(os.listdir(tmp_path))
        f.write(b"x")

    old = os.umask(0o027)
    try:
        write_atomically(tmp_path / "m.npz", write)
    finally:
        os.umask(old)
    assert (tmp_path / "m.npz").stat().st_mode & 0o777 == 0o640  # 0o666 less the umask
    [temporary] = names
    assert TEMPORARY.fullmatch(temporary)["name"] == "m.npz"
