"""The organiser's side of reader studies: :class:`StudyDatabase` creates studies, adds readers,
lists and checks them, opens a reader's session and exports the answers with the truth joined.

The file, its schema and its transactions are :class:`~engine.study.database.DatabaseConnection`'s;
the numbering and reader orders are :mod:`engine.study.case_order`'s; what a reader does is
:class:`~engine.study.reader_session.ReaderSession`'s.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from engine.errors import BrainSynthError
from engine.study.case_files import case_file_problem, case_file_sha256, synthetic_files
from engine.study.case_order import anonymous_numbers, reader_order
from engine.study.database import DatabaseConnection, now_iso
from engine.study.display import DisplaySettings, display_array
from engine.study.errors import StudyError
from engine.study.questions import DEFAULT_QUESTIONS, Question, check_questions
from engine.study.reader_session import ReaderSession
from engine.study.records import AnswerRecord, HistoryRecord, Progress, StudyInfo, StudySummary

#: ``progress(done, total)`` while a study's files are validated.
ProgressCallback = Callable[[int, int], None]


class StudyDatabase(DatabaseConnection):
    """All reader studies in one SQLite file, as the organiser uses them.

    The file is opened (and its schema checked or created) as by
    :class:`~engine.study.database.DatabaseConnection`; the object is safe to share between
    threads.

    Args:
        path: the database file; None for :func:`~engine.study.database.default_database_path`.
            Created (with its folder) if missing.

    Raises:
        StudyError: the file is not a BrainSynth study database, is damaged, was made by a
            newer BrainSynth, or cannot be created or opened.
    """

    def create_study(
        self,
        *,
        name: str,
        real: Sequence[str | os.PathLike],
        synthetic: Sequence[str | os.PathLike],
        readers: Sequence[str],
        preset: str | None = None,
        allow_changes: bool = False,
        seed: int | None = None,
        questions: Sequence[Question] = DEFAULT_QUESTIONS,
        validate: bool = True,
        allow_synthetic_in_real: bool = False,
        progress: ProgressCallback | None = None,
    ) -> StudyInfo:
        """Create a study from pools of real and synthetic volumes.

        Every file is put through the display pipeline once here (with ``validate``), so a
        file that cannot be shown is reported to the organiser now, by name, and not to a
        reader mid-study. Each file's SHA-256 is stored, so a case file replaced later is
        refused instead of being shown under the old truth.

        Args:
            name: unique study name (shown to readers).
            real: real scans: files and/or folders (MNI-registered, any orientation).
            synthetic: synthetic volumes: files and/or folders (BrainSynth exports).
            readers: reader names (at least one, unique).
            preset: model preset whose grid cases are shown on; None to use the preset whose
                grid the synthetic volumes lie on (an error if they lie on none).
            allow_changes: readers may change saved answers (every change is kept).
            seed: seed of the case numbering and reader orders; None for a random one (stored).
            questions: the rating panel; must contain the 1..5 ``confidence`` question.
            validate: run every file through the display pipeline now (slow for big pools;
                tests of storage alone switch it off).
            allow_synthetic_in_real: accept real-pool files whose BrainSynth sidecar says they
                are synthetic (refused otherwise: a mislabelled pool makes the study's truth wrong).
            progress: called as ``progress(done, total)`` while validating.

        Returns:
            The new study. Unbalanced pools are allowed; front ends warn with
            :func:`engine.study.case_files.pool_balance_warning`.

        Raises:
            StudyError: a bad name, no readers or duplicate readers, an empty pool, a file in
                both pools or twice, a real-pool file whose sidecar says it is synthetic, unusable
                files (all of them listed), a name that exists.
        """
        from engine import __version__
        from engine.volumes import find_volumes

        name = (name or "").strip()
        if not name:
            raise StudyError("a study needs a name")
        if len(name) > 200 or any(ch in name for ch in "\n\r\t"):
            raise StudyError("a study name must be one line of at most 200 characters")
        reader_names = _clean_readers(readers)
        questions = check_questions(questions)

        pools: dict[str, list[Path]] = {}
        for truth, paths in (("real", real), ("synthetic", synthetic)):
            if not paths:
                raise StudyError(f"the {truth} pool is empty; give at least one {truth} volume (file or folder)")
            try:
                pools[truth] = [p.resolve() for p in find_volumes(paths)]
            except BrainSynthError as exc:
                raise StudyError(f"the {truth} pool is empty: {exc}") from exc
        both = sorted(set(pools["real"]) & set(pools["synthetic"]))
        if both:
            raise StudyError(
                f"{both[0]} is in both the real and the synthetic pool"
                + (f" (and {len(both) - 1} more)" if len(both) > 1 else "")
            )
        mislabelled = [] if allow_synthetic_in_real else synthetic_files(pools["real"])
        if mislabelled:
            raise StudyError(
                f"{mislabelled[0].name} is in the real pool but its sidecar says it is synthetic"
                + (f" (and {len(mislabelled) - 1} more)" if len(mislabelled) > 1 else "")
                + "; move it to the synthetic pool, or allow synthetic files in the real pool on purpose"
            )
        with self.read() as conn:
            if conn.execute("SELECT 1 FROM studies WHERE name = ?", (name,)).fetchone():
                raise StudyError(f"a study named {name!r} already exists in {self.path}; choose another name")

        entries = [("real", p) for p in pools["real"]] + [("synthetic", p) for p in pools["synthetic"]]
        problems: list[str] = []
        hashes: dict[str, Path] = {}
        digests: list[str] = []
        for truth, path in entries:
            try:
                if not path.is_file():
                    raise StudyError(f"{path} does not exist or is not a file")
                digest = case_file_sha256(path)
                if digest in hashes:
                    raise StudyError(f"{path} has the same content as {hashes[digest]}; each case must be shown once")
                hashes[digest] = path
                digests.append(digest)
            except BrainSynthError as exc:
                problems.append(f"{truth} {path.name}: {exc}")
        if not problems:
            settings = display_settings_for(preset, pools["synthetic"])
            for done, (truth, path) in enumerate(entries, start=1):
                if validate:
                    try:
                        display_array(path, settings)
                    except BrainSynthError as exc:
                        problems.append(f"{truth} {path.name}: {exc}")
                if progress is not None:
                    progress(done, len(entries))
        if problems:
            listed = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise StudyError(f"{len(problems)} of {len(entries)} volumes cannot be used: {listed}")

        seed = secrets.randbelow(2**31) if seed is None else int(seed)
        numbers = anonymous_numbers(seed, len(entries))
        created = now_iso()
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM studies WHERE name = ?", (name,)).fetchone():
                raise StudyError(f"a study named {name!r} already exists in {self.path}; choose another name")
            study_id = conn.execute(
                "INSERT INTO studies (name, created_at, seed, allow_changes, display_json, questions_json, "
                "software_version) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    created,
                    seed,
                    int(bool(allow_changes)),
                    json.dumps(settings.to_dict()),
                    json.dumps([q.to_dict() for q in questions]),
                    __version__,
                ),
            ).lastrowid
            conn.executemany(
                "INSERT INTO cases (study_id, number, truth, source_path, source_sha256) VALUES (?, ?, ?, ?, ?)",
                [
                    (study_id, number, truth, str(path), digest)
                    for number, (truth, path), digest in zip(numbers, entries, digests, strict=True)
                ],
            )
            for reader in reader_names:
                self._insert_reader(conn, study_id, seed, reader)
        return self.study(name)

    @staticmethod
    def _insert_reader(conn: sqlite3.Connection, study_id: int, seed: int, reader: str) -> None:
        reader_id = conn.execute(
            "INSERT INTO readers (study_id, name, added_at) VALUES (?, ?, ?)", (study_id, reader, now_iso())
        ).lastrowid
        cases = dict(conn.execute("SELECT number, id FROM cases WHERE study_id = ?", (study_id,)).fetchall())
        order = reader_order(seed, reader, list(cases))
        conn.executemany(
            "INSERT INTO reader_cases (reader_id, case_id, position, queue) VALUES (?, ?, ?, ?)",
            [(reader_id, cases[number], pos, pos) for pos, number in enumerate(order, start=1)],
        )

    def add_reader(self, study: str, reader: str) -> None:
        """Add a reader to an existing study (their order is seeded like everyone's).

        Raises:
            StudyError: unknown study, an empty name, or a reader of that name exists.
        """
        (reader,) = _clean_readers([reader])
        with self.transaction() as conn:
            study_id, seed = self._study_row(conn, study, "id, seed")
            if conn.execute("SELECT 1 FROM readers WHERE study_id = ? AND name = ?", (study_id, reader)).fetchone():
                raise StudyError(f"study {study!r} already has a reader named {reader!r}")
            self._insert_reader(conn, study_id, seed, reader)

    def has_organiser_passphrase(self, study: str) -> bool:
        """Whether ``study`` has an organiser passphrase (results and truth stay behind it).

        Raises:
            StudyError: no such study.
        """
        from engine.study.passphrase import meta_key

        with self.read() as conn:
            (study_id,) = self._study_row(conn, study, "id")
            return conn.execute("SELECT 1 FROM meta WHERE key = ?", (meta_key(study_id),)).fetchone() is not None

    def set_organiser_passphrase(self, study: str, passphrase: str, *, current: str | None = None) -> None:
        """Set (or change) the organiser passphrase of ``study``; stored as a salted scrypt hash.

        Args:
            study: the study name.
            passphrase: the new passphrase (at least 6 characters).
            current: the passphrase now in force; needed to change an existing one.

        Raises:
            StudyError: no such study, a passphrase too short, or ``current`` missing or wrong.
        """
        from engine.study.passphrase import hash_passphrase, meta_key, verify_passphrase

        record = hash_passphrase(passphrase)
        with self.transaction() as conn:
            (study_id,) = self._study_row(conn, study, "id")
            key = meta_key(study_id)
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row is not None and not verify_passphrase(current or "", row[0]):
                raise StudyError(f"the current organiser passphrase of study {study!r} is needed to change it")
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, record))

    def check_organiser_passphrase(self, study: str, passphrase: str) -> bool:
        """Whether ``passphrase`` is the organiser passphrase of ``study`` (False when none is set).

        Raises:
            StudyError: no such study.
        """
        from engine.study.passphrase import meta_key, verify_passphrase

        with self.read() as conn:
            (study_id,) = self._study_row(conn, study, "id")
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (meta_key(study_id),)).fetchone()
        return row is not None and verify_passphrase(passphrase, row[0])

    def _study_row(self, conn: sqlite3.Connection, study: str, columns: str) -> tuple:
        row = conn.execute(f"SELECT {columns} FROM studies WHERE name = ?", (study,)).fetchone()
        if row is None:
            names = [r[0] for r in conn.execute("SELECT name FROM studies ORDER BY created_at")]
            known = f"studies here: {', '.join(names)}" if names else "there are no studies yet"
            raise StudyError(f"no study named {study!r} in {self.path} ({known})")
        return tuple(row)

    def _rows_of_study(self, study: str, sql: str) -> list[tuple]:
        """The rows of ``sql``, whose one parameter is the study's id.

        Raises:
            StudyError: no such study (the message lists the existing ones).
        """
        with self.read() as conn:
            (study_id,) = self._study_row(conn, study, "id")
            return conn.execute(sql, (study_id,)).fetchall()

    def study(self, name: str) -> StudyInfo:
        """The study of that name (what its readers may know).

        Raises:
            StudyError: no such study (the message lists the existing ones).
        """
        with self.read() as conn:
            study_id, created, allow, display, questions = self._study_row(
                conn, name, "id, created_at, allow_changes, display_json, questions_json"
            )
            readers = tuple(
                r[0] for r in conn.execute("SELECT name FROM readers WHERE study_id = ? ORDER BY id", (study_id,))
            )
            n_cases = conn.execute("SELECT COUNT(*) FROM cases WHERE study_id = ?", (study_id,)).fetchone()[0]
        return StudyInfo(
            name=name,
            created_at=created,
            allow_changes=bool(allow),
            questions=tuple(Question.from_dict(q) for q in json.loads(questions)),
            display=DisplaySettings.from_dict(json.loads(display)),
            readers=readers,
            n_cases=int(n_cases),
        )

    def list_studies(self) -> list[StudySummary]:
        """Every study in the database, oldest first, with pool sizes and answers per reader."""
        out = []
        with self.read() as conn:
            rows = conn.execute(
                "SELECT id, name, created_at, allow_changes, display_json FROM studies ORDER BY id"
            ).fetchall()
            for study_id, name, created, allow, display in rows:
                counts = dict(
                    conn.execute(
                        "SELECT truth, COUNT(*) FROM cases WHERE study_id = ? GROUP BY truth", (study_id,)
                    ).fetchall()
                )
                answered = dict(
                    conn.execute(
                        "SELECT r.name, COUNT(a.case_id) FROM readers r LEFT JOIN answers a ON a.reader_id = r.id "
                        "WHERE r.study_id = ? GROUP BY r.id ORDER BY r.id",
                        (study_id,),
                    ).fetchall()
                )
                out.append(
                    StudySummary(
                        name=name,
                        created_at=created,
                        n_real=int(counts.get("real", 0)),
                        n_synthetic=int(counts.get("synthetic", 0)),
                        readers=tuple(answered),
                        answered={k: int(v) for k, v in answered.items()},
                        allow_changes=bool(allow),
                        preset=str(json.loads(display).get("preset", "")),
                    )
                )
        return out

    def session(self, study: str, reader: str) -> ReaderSession:
        """Open a reader's session: the only object a review front end needs.

        Raises:
            StudyError: unknown study, or the reader is not part of it (the message lists its readers).
        """
        info = self.study(study)
        with self.read() as conn:
            row = conn.execute(
                "SELECT r.id FROM readers r JOIN studies s ON s.id = r.study_id WHERE s.name = ? AND r.name = ?",
                (study, reader),
            ).fetchone()
        if row is None:
            raise StudyError(
                f"{reader!r} is not a reader of study {study!r} (its readers: {', '.join(info.readers)}); "
                f"check the spelling or add the reader first"
            )
        return ReaderSession(self, info, reader, int(row[0]))

    def progress(self, study: str) -> dict[str, Progress]:
        """Reader name → progress, for every reader of the study."""
        info = self.study(study)
        return {reader: self.session(study, reader).progress() for reader in info.readers}

    def check_cases(self, study: str) -> list[str]:
        """Problems with the study's case files (missing or changed since creation), for the organiser."""
        problems = []
        rows = self._rows_of_study(
            study, "SELECT number, source_path, source_sha256 FROM cases WHERE study_id = ? ORDER BY number"
        )
        for number, source, digest in rows:
            path = Path(source)
            problem = case_file_problem(path, digest)
            if problem == "missing":
                problems.append(f"case {number}: {path} is missing")
            elif problem == "changed":
                problems.append(f"case {number}: {path} has changed since the study was created")
        return problems

    # ------------------------------------------------------------------------------ exports

    def answer_records(self, study: str, *, include_sources: bool = False) -> list[AnswerRecord]:
        """Every current answer of the study with the truth joined, by reader then case number.

        Args:
            study: study name.
            include_sources: also give each case's file path (for the organiser's own analysis).
        """
        rows = self._rows_of_study(
            study,
            "SELECT r.name, c.number, c.truth, rc.position, rc.skips, a.values_json, a.seconds, "
            "a.answered_at, a.updated_at, a.revision, c.source_path "
            "FROM answers a JOIN readers r ON r.id = a.reader_id JOIN cases c ON c.id = a.case_id "
            "JOIN reader_cases rc ON rc.reader_id = a.reader_id AND rc.case_id = a.case_id "
            "WHERE r.study_id = ? ORDER BY r.id, c.number",
        )
        return [
            AnswerRecord(
                study=study,
                reader=reader,
                case_number=int(number),
                truth=truth,
                position=int(position),
                skips=int(skips),
                values=json.loads(values),
                seconds=seconds,
                answered_at=answered,
                updated_at=updated,
                revision=int(revision),
                source=source if include_sources else None,
            )
            for reader, number, truth, position, skips, values, seconds, answered, updated, revision, source in rows
        ]

    def history_records(self, study: str) -> list[HistoryRecord]:
        """Every saved answer and change of the study, oldest first, with the truth joined."""
        rows = self._rows_of_study(
            study,
            "SELECT r.name, c.number, c.truth, h.revision, h.action, h.values_json, h.seconds, h.recorded_at "
            "FROM answer_history h JOIN readers r ON r.id = h.reader_id JOIN cases c ON c.id = h.case_id "
            "WHERE r.study_id = ? ORDER BY h.id",
        )
        return [
            HistoryRecord(
                study=study,
                reader=reader,
                case_number=int(number),
                truth=truth,
                revision=int(revision),
                action=action,
                values=json.loads(values),
                seconds=seconds,
                recorded_at=recorded,
            )
            for reader, number, truth, revision, action, values, seconds, recorded in rows
        ]


def _clean_readers(readers: Sequence[str]) -> list[str]:
    names = [str(r).strip() for r in readers]
    if not names or not any(names):
        raise StudyError("a study needs at least one reader name")
    if any(not n for n in names):
        raise StudyError("reader names must not be empty")
    if any(len(n) > 100 or any(ch in n for ch in "\n\r\t,") for n in names):
        raise StudyError("a reader name must be one line of at most 100 characters, without commas")
    seen = [n for i, n in enumerate(names) if n in names[:i]]
    if seen:
        raise StudyError(f"reader {seen[0]!r} is listed twice")
    return names


def display_settings_for(preset: str | None, synthetic: Sequence[Path]) -> DisplaySettings:
    """The named preset's settings, or those of the preset whose grid the synthetic volumes lie on."""
    from engine.specs import PRESETS, get_preset

    if preset is not None:
        return DisplaySettings.from_spec(get_preset(preset))
    import nibabel as nib
    import numpy as np

    grids = set()
    for path in synthetic:
        try:
            img = nib.load(path)
            grids.add((tuple(int(n) for n in img.shape[:3]), tuple(np.round(img.affine, 3).ravel())))
        except Exception:
            grids.add(None)
    if len(grids) == 1 and None not in grids:
        ((shape, affine),) = grids
        for spec in PRESETS.values():
            if tuple(spec.grid.shape) == shape and np.allclose(
                np.asarray(affine).reshape(4, 4), spec.grid.affine, atol=1e-2
            ):
                return DisplaySettings.from_spec(spec)
    raise StudyError(
        "the synthetic volumes do not all lie on one preset's model grid, so the display grid is unclear; "
        f"choose one with --preset ({', '.join(PRESETS)}), normally the preset of the model that made them"
    )
