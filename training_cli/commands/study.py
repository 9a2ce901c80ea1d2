"""``brainsynth-cli study``: set up blind reader studies, rate cases headless, report and export.

Subcommands::

    study create --name N --real PATH... --synthetic PATH... --readers A,B [--preset P]
                 [--allow-changes] [--seed S]
    study list
    study status NAME
    study next NAME --reader A [--volume-out FILE.nii.gz]
    study answer NAME --reader A [--case N] --confidence 1-5 --realism 1-5 --plausibility 1-5
                 --consistency 1-5 [--notes TEXT] [--set KEY=VALUE] [--seconds S]
    study skip NAME --reader A [--case N]
    study rate NAME --reader A [--volume-dir DIR]     (interactive, one question per prompt)
    study next|answer|skip|rate --pack FILE.bsstudy ...  (a reader's pack: study and reader from it)
    study add-reader NAME --reader C
    study pack NAME --reader A --out A.bsstudy [--overwrite]   (one self-contained file per reader)
    study merge NAME FILE.bsstudy...                 (verify packs, import their answers)
    study check NAME [--blinding]
    study report NAME --out DIR [--overwrite]
    study export NAME --out FILE.csv|FILE.json [--with-sources] [--overwrite]
    study backup NAME --out FILE.sqlite [--overwrite]   (a consistent copy, also of a live study)

Every subcommand takes ``--db PATH`` (default: ``$BRAINSYNTH_STUDY_DB`` or the user data
directory). Nothing a reader runs (next, answer, skip, rate, status) prints a case's truth or
file; report and export do, for the organiser.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator

_RATING_FLAGS = (
    ("confidence", "real or synthetic: 1 certainly real, 2 probably real, 3 unsure, 4 probably synthetic, 5 certainly"),
    ("realism", "overall realism, 1 (very poor) to 5 (excellent)"),
    ("plausibility", "anatomical plausibility, 1 to 5"),
    ("consistency", "consistency between slices, 1 to 5"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``study`` subcommand and its own subcommands."""
    parser = subparsers.add_parser(
        "study",
        help="blind reader studies: readers rate real and synthetic scans",
        description=(
            "Set up blind reader studies (a visual Turing test), rate cases from the terminal, "
            "and write the report (accuracy, binomial test, ROC, kappa) and answer exports."
        ),
    )
    actions = parser.add_subparsers(dest="study_command", metavar="ACTION")

    def add(name: str, help_text: str, func, *, study: bool = True, pack: bool = False) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text, description=help_text)
        if pack:  # a reader's command: the study and reader come from --pack, or NAME and --reader
            sub.add_argument("name", metavar="NAME", nargs="?", help="study name (not needed with --pack)")
            sub.add_argument(
                "--pack", metavar="FILE", help="a study pack (.bsstudy): rate in it instead of the database"
            )
        elif study:
            sub.add_argument("name", metavar="NAME", help="study name")
        sub.add_argument("--db", metavar="PATH", help="study database (default: $BRAINSYNTH_STUDY_DB or user data dir)")
        sub.set_defaults(func=func)
        return sub

    create = add("create", "create a study from pools of real and synthetic volumes", _create, study=False)
    create.add_argument("--name", required=True, help="unique study name (readers see it)")
    create.add_argument("--real", nargs="+", required=True, metavar="PATH", help="real scans: files or folders")
    create.add_argument(
        "--synthetic", nargs="+", required=True, metavar="PATH", help="synthetic volumes: files or folders"
    )
    create.add_argument("--readers", required=True, metavar="A,B", help="comma-separated reader names")
    create.add_argument(
        "--preset", metavar="P", help="preset whose grid cases are shown on (default: the synthetic volumes' grid)"
    )
    create.add_argument("--allow-changes", action="store_true", help="let readers change saved answers (all kept)")
    create.add_argument(
        "--allow-synthetic-in-real",
        action="store_true",
        help="accept real-pool files whose sidecar says they are synthetic (refused otherwise)",
    )
    create.add_argument(
        "--seed", type=int, metavar="S", help="seed of case numbers and reader orders (default: random)"
    )

    add("list", "list the studies in the database", _list, study=False)
    add("status", "each reader's progress", _status)
    check = add("check", "check that every case file is still there and unchanged", _check)
    check.add_argument(
        "--blinding",
        action="store_true",
        help="also check that simple image statistics of the displayed cases do not give real and synthetic away "
        "(exit status 1 when they do)",
    )

    pack = add("pack", "write one reader's study pack: a self-contained file to rate elsewhere", _pack)
    _reader_arg(pack)
    pack.add_argument("--out", required=True, metavar="FILE", help="the pack file (e.g. READER.bsstudy)")
    pack.add_argument("--overwrite", action="store_true", help="replace the file if it exists")

    merge = add("merge", "verify readers' study packs and import their answers (again: only what is new)", _merge)
    merge.add_argument("packs", nargs="+", metavar="FILE", help="study packs (.bsstudy)")

    next_ = add("next", "show which case a reader rates now, and start its clock", _next, pack=True)
    _reader_arg(next_, required=False)
    next_.add_argument(
        "--volume-out", metavar="FILE", help="also write the case as displayed (anonymous NIfTI) to view elsewhere"
    )
    next_.add_argument("--overwrite", action="store_true", help="replace --volume-out if it exists")

    answer = add("answer", "save a reader's answer to a case", _answer, pack=True)
    _reader_arg(answer, required=False)
    answer.add_argument("--case", type=int, metavar="N", help="case number (default: the reader's current case)")
    for key, text in _RATING_FLAGS:
        answer.add_argument(f"--{key}", metavar="1-5", help=text)
    answer.add_argument("--notes", metavar="TEXT", help="free notes")
    answer.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="answer to a question by key (custom panels)"
    )
    answer.add_argument("--seconds", type=float, metavar="S", help="time spent (default: since 'study next')")

    skip = add("skip", "skip a case for later (it comes back after all others)", _skip, pack=True)
    _reader_arg(skip, required=False)
    skip.add_argument("--case", type=int, metavar="N", help="case number (default: the reader's current case)")

    rate = add("rate", "rate cases interactively in the terminal", _rate, pack=True)
    _reader_arg(rate, required=False)
    rate.add_argument("--volume-dir", metavar="DIR", help="write each case as displayed to DIR/case_NNNN.nii.gz")

    add_reader = add("add-reader", "add a reader to a study", _add_reader)
    _reader_arg(add_reader)

    report = add("report", "write report.md, roc.png, answers.csv and answers.json", _report)
    report.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    report.add_argument("--overwrite", action="store_true", help="replace existing report files")

    export = add("export", "export the answers (with the truth) as CSV or JSON", _export)
    export.add_argument("--out", required=True, metavar="FILE", help="a .csv or .json file")
    export.add_argument("--with-sources", action="store_true", help="add each case's source file path")
    export.add_argument("--overwrite", action="store_true", help="replace the file if it exists")

    backup = add(
        "backup",
        "copy the database holding a study, consistently even while readers work (SQLite's backup API)",
        _backup,
    )
    backup.add_argument("--out", required=True, metavar="FILE", help="the copy (a new .sqlite file)")
    backup.add_argument("--overwrite", action="store_true", help="replace the file if it exists")

    parser.set_defaults(func=lambda args: _usage(parser))


def _reader_arg(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument(
        "--reader", required=required, metavar="READER", help="reader name" + ("" if required else " (not with --pack)")
    )


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _db(args: argparse.Namespace):
    from engine.study import StudyDatabase

    return StudyDatabase(args.db)


def _create(args: argparse.Namespace) -> int:
    from engine.study.case_files import pool_balance_warning

    readers = [r.strip() for r in args.readers.split(",")]
    with _db(args) as db:

        def progress(done: int, total: int) -> None:
            print(f"\rchecking volumes {done}/{total}", end="", file=sys.stderr, flush=True)
            if done == total:
                print(file=sys.stderr)

        info = db.create_study(
            name=args.name,
            real=args.real,
            synthetic=args.synthetic,
            readers=readers,
            preset=args.preset,
            allow_changes=args.allow_changes,
            seed=args.seed,
            allow_synthetic_in_real=args.allow_synthetic_in_real,
            progress=progress,
        )
        summary = next(s for s in db.list_studies() if s.name == info.name)
        warning = pool_balance_warning(summary.n_real, summary.n_synthetic)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        grid = " x ".join(str(n) for n in info.display.grid.shape)
        print(
            f"created study {info.name!r}: {info.n_cases} cases ({summary.n_real} real, {summary.n_synthetic} "
            f"synthetic) on the {info.display.preset} grid ({grid}), readers {', '.join(info.readers)}"
            f"{', answers can be changed' if info.allow_changes else ''}; database {db.path}"
        )
    return 0


def _list(args: argparse.Namespace) -> int:
    with _db(args) as db:
        studies = db.list_studies()
        if not studies:
            print(f"no studies in {db.path}")
            return 0
        for s in studies:
            total = s.n_real + s.n_synthetic
            done = ", ".join(f"{r} {n}/{total}" for r, n in s.answered.items())
            print(f"{s.name}: {total} cases ({s.n_real} real, {s.n_synthetic} synthetic), {s.preset} grid, {done}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from engine.study.merge import pack_records

    with _db(args) as db:
        packs: dict[str, list] = {}
        for record in pack_records(db, args.name):
            packs.setdefault(record.reader, []).append(record)
        for reader, p in db.progress(args.name).items():
            waiting = f", {p.skipped} skipped for later" if p.skipped else ""
            state = "done" if p.done else f"{p.remaining} to go{waiting}"
            line = f"{reader}: {p.answered}/{p.total} answered ({state})"
            for record in packs.get(reader, []):
                merged = (
                    f"last merged {record.merged_at} with {record.answered} answered"
                    if record.merged_at
                    else "not merged yet"
                )
                line += f"; pack {record.pack_id[:8]} made {record.made_at}, {merged}"
            print(line)
    return 0


def _check(args: argparse.Namespace) -> int:
    with _db(args) as db:
        problems = db.check_cases(args.name)
        for line in problems:
            print(line, file=sys.stderr)
        if not problems:
            print(f"all {db.study(args.name).n_cases} case files of {args.name!r} are present and unchanged")
        if args.blinding and not problems:
            from engine.study.blinding import check_study

            def progress(done: int, total: int) -> None:
                print(f"\rmeasuring displayed cases {done}/{total}", end="", file=sys.stderr, flush=True)
                if done == total:
                    print(file=sys.stderr)

            report = check_study(db, args.name, progress=progress)
            for line in report.lines():
                print(line, file=sys.stderr if report.leaks else sys.stdout)
            if report.leaks:
                return 1
    return 1 if problems else 0


def _write_case(session, number: int, path: str, *, overwrite: bool) -> None:
    from engine.export import save_nifti

    case = session.load_case(number)
    save_nifti(path, case.data, case.affine, overwrite=overwrite)


@contextlib.contextmanager
def _reader_session(args: argparse.Namespace) -> Iterator:
    """The reader's session: in the pack given with --pack, else NAME and --reader in the database."""
    from engine.study import StudyError

    if args.pack:
        from engine.study.pack import open_pack

        with open_pack(args.pack) as session:
            given_actual = ((args.name, session.study.name, "study"), (args.reader, session.reader, "reader"))
            for given, actual, what in given_actual:
                if given is not None and given != actual:
                    raise StudyError(f"{args.pack} is the pack of {what} {actual!r}, not {given!r}; leave {what} out")
            yield session
        return
    if not args.name or not args.reader:
        raise StudyError("give the study NAME and --reader, or a study pack with --pack FILE")
    with _db(args) as db:
        yield db.session(args.name, args.reader)


def _next(args: argparse.Namespace) -> int:
    with _reader_session(args) as session:
        number = session.next_case()
        progress = session.progress()
        if number is None:
            print(f"all {progress.total} cases answered")
            return 0
        session.open_case(number)
        if args.volume_out:
            _write_case(session, number, args.volume_out, overwrite=args.overwrite)
        print(f"case {number} ({progress.answered} of {progress.total} answered)")
    return 0


def _parse_values(args: argparse.Namespace) -> dict[str, str]:
    from engine.study import StudyError

    values = {key: getattr(args, key) for key, _ in _RATING_FLAGS if getattr(args, key) is not None}
    if args.notes is not None:
        values["notes"] = args.notes
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise StudyError(f"--set {item!r}: write KEY=VALUE, e.g. --set realism=4")
        values[key.strip()] = value
    return values


def _current(session, case: int | None) -> int:
    from engine.study import StudyError

    if case is not None:
        return case
    number = session.next_case()
    if number is None:
        raise StudyError(f"{session.reader} has answered every case; give --case to change an answer")
    return number


def _answer(args: argparse.Namespace) -> int:
    with _reader_session(args) as session:
        number = _current(session, args.case)
        saved = session.answer(number, _parse_values(args), seconds=args.seconds)
        following = session.next_case()
        verb = "saved" if saved.revision == 1 else f"changed (revision {saved.revision})"
        after = f"next: case {following}" if following is not None else "all cases answered"
        print(f"case {number} {verb}; {after}")
    return 0


def _skip(args: argparse.Namespace) -> int:
    with _reader_session(args) as session:
        number = _current(session, args.case)
        session.skip(number)
        print(f"case {number} skipped for later; next: case {session.next_case()}")
    return 0


def _pack(args: argparse.Namespace) -> int:
    from engine.study.pack import make_pack

    with _db(args) as db:

        def progress(done: int, total: int) -> None:
            print(f"\rpreparing cases {done}/{total}", end="", file=sys.stderr, flush=True)
            if done == total:
                print(file=sys.stderr)

        info = make_pack(db, args.name, args.reader, args.out, overwrite=args.overwrite, progress=progress)
        print(
            f"wrote {info.path}: {info.n_cases} cases of {info.study!r} for {info.reader} (pack {info.pack_id[:8]}); "
            f"they rate it with 'brainsynth {info.path.name}' or 'brainsynth-cli study rate --pack {info.path.name}', "
            f"then send it back for 'brainsynth-cli study merge {info.study} {info.path.name}'"
        )
    return 0


def _merge(args: argparse.Namespace) -> int:
    from engine.errors import BrainSynthError
    from engine.study.merge import merge_pack

    failed = 0
    with _db(args) as db:
        db.study(args.name)  # an unknown study is one error, not one per pack
        for path in args.packs:
            try:
                report = merge_pack(db, args.name, path)
            except BrainSynthError as exc:
                print(f"error: {exc}", file=sys.stderr)
                failed += 1
                continue
            print(report.summary())
    if failed:
        print(f"{failed} of {len(args.packs)} packs refused", file=sys.stderr)
    return 1 if failed else 0


def _add_reader(args: argparse.Namespace) -> int:
    with _db(args) as db:
        db.add_reader(args.name, args.reader)
        print(f"added reader {args.reader!r} to {args.name!r}")
    return 0


#: Environment variable holding the organiser passphrase for report and export (scripts, CI).
PASSPHRASE_ENV = "BRAINSYNTH_ORGANISER_PASSPHRASE"


def _organiser_check(db, study: str) -> None:
    """Report and export reveal the truth: when the study has an organiser passphrase, ask for it.

    Taken from $BRAINSYNTH_ORGANISER_PASSPHRASE, else asked for at the terminal (not echoed).
    """
    import getpass
    import os

    from engine.study import StudyError

    if not db.has_organiser_passphrase(study):
        return
    passphrase = os.environ.get(PASSPHRASE_ENV)
    if passphrase is None:
        if not sys.stdin.isatty():
            raise StudyError(
                f"study {study!r} has an organiser passphrase; set ${PASSPHRASE_ENV} or run this at a terminal"
            )
        passphrase = getpass.getpass(f"organiser passphrase of {study!r}: ")
    if not db.check_organiser_passphrase(study, passphrase):
        raise StudyError(f"that is not the organiser passphrase of study {study!r}")


def _report(args: argparse.Namespace) -> int:
    from engine.study.report import write_report

    with _db(args) as db:
        _organiser_check(db, args.name)
        files = write_report(db, args.name, args.out, overwrite=args.overwrite)
        print(f"wrote {files.markdown}, {files.roc_png.name}, {files.csv.name} and {files.json.name}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from engine.study.report import export_answers

    with _db(args) as db:
        _organiser_check(db, args.name)
        path = export_answers(db, args.name, args.out, include_sources=args.with_sources, overwrite=args.overwrite)
        print(f"wrote {path}")
    return 0


def _backup(args: argparse.Namespace) -> int:
    with _db(args) as db:
        db.study(args.name)  # an unknown name is an error, not a silent copy of something else
        names = [s.name for s in db.list_studies()]
        path = db.backup(args.out, overwrite=args.overwrite)
        others = f" and {len(names) - 1} other stud{'y' if len(names) == 2 else 'ies'}" if len(names) > 1 else ""
        print(f"backed up {args.name!r}{others} from {db.path} to {path} (every saved answer included)")
    return 0


class _Quit(Exception):  # noqa: N818 - a reader's command, not an error
    pass


class _Skip(Exception):  # noqa: N818 - a reader's command, not an error
    pass


def _ask(question) -> object:
    """Prompt until a valid answer; 's' skips the case, 'q' quits (EOF too)."""
    from engine.study import StudyError
    from engine.study.questions import validate_answer

    if question.kind == "scale":
        choices = ", ".join(question.label(v) for v in question.choices)
        prompt = f"{question.text} [{choices}; s skip, q quit]: "
    else:
        prompt = f"{question.text} ({'required' if question.required else 'Enter for none'}; q quit): "
    while True:
        try:
            raw = input(prompt).strip()
        except EOFError:
            raise _Quit from None
        if raw.lower() == "q":
            raise _Quit
        if raw.lower() == "s" and question.kind == "scale":
            raise _Skip
        if not raw and not question.required:
            return None
        try:
            return validate_answer([question], {question.key: raw})[question.key]
        except StudyError as exc:
            print(f"  {exc}")


def _rate(args: argparse.Namespace) -> int:
    from pathlib import Path

    with _reader_session(args) as session:
        print(f"study {session.study.name!r}, reader {session.reader}: 's' skips a case for later, 'q' quits")
        while (number := session.next_case()) is not None:
            progress = session.progress()
            session.open_case(number)
            where = ""
            if args.volume_dir:
                path = Path(args.volume_dir) / f"case_{number:04d}.nii.gz"
                _write_case(session, number, str(path), overwrite=True)
                where = f" ({path})"
            print(f"\ncase {number}{where}: {progress.answered} of {progress.total} answered")
            values = {}
            try:
                for question in session.questions:
                    value = _ask(question)
                    if value is not None:
                        values[question.key] = value
            except _Skip:
                session.skip(number)
                print(f"case {number} skipped for later")
                continue
            except _Quit:
                print(f"stopped; {progress.answered} of {progress.total} answered, the rest waits for you")
                return 0
            session.answer(number, values)
            print(f"case {number} saved")
        print(f"all {session.progress().total} cases answered; thank you")
    return 0
