"""fewshot.errors: bad input is one line and exit 2; an interrupt says how to go on; a multi-process
launch (torchrun) is refused before the command runs."""

import pytest

from fewshot.errors import UserError, cli_main, require_file


def exits(main, capsys, **kwargs) -> tuple[int, str]:
    with pytest.raises(SystemExit) as caught:
        cli_main(main, [], **kwargs)
    return caught.value.code, capsys.readouterr().err


def test_a_user_error_is_one_line_and_exit_2(capsys):
    def main(argv):
        raise UserError("bad file\n  with details")

    assert exits(main, capsys) == (2, "error: bad file with details\n")


@pytest.mark.parametrize("resumable, hint", [(True, "with --resume to continue"), (False, "rerun the same command\n")])
def test_an_interrupt_suggests_resume_only_to_commands_that_have_it(capsys, resumable, hint):
    def main(argv):
        raise KeyboardInterrupt

    code, err = exits(main, capsys, resumable=resumable)
    assert code == 130 and hint in err and ("--resume" in err) == resumable


def test_torchrun_with_several_processes_is_refused_before_main_runs(capsys, monkeypatch):
    ran = []
    monkeypatch.setenv("WORLD_SIZE", "4")
    code, err = exits(ran.append, capsys)
    assert (code, ran) == (2, []) and "WORLD_SIZE=4: this command runs in one process" in err
    monkeypatch.setenv("WORLD_SIZE", "1")
    cli_main(ran.append, [])  # one process is fine
    assert ran == [[]]


def test_require_file_tells_a_folder_from_a_missing_file(tmp_path):
    (tmp_path / "a.npz").write_bytes(b"x")
    assert require_file(str(tmp_path / "a.npz")) == tmp_path / "a.npz"
    with pytest.raises(UserError, match="b.npz: checkpoint not found"):
        require_file(tmp_path / "b.npz", "checkpoint")
    with pytest.raises(UserError, match="is a folder, expected a file"):
        require_file(tmp_path)
