-- The reader-study database layout of schema version 1 (PRAGMA user_version = 1), frozen.
-- Files written with it must keep opening: tests/test_study_storage.py builds one from this text.
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE studies (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    seed INTEGER NOT NULL,
    allow_changes INTEGER NOT NULL,
    display_json TEXT NOT NULL,
    questions_json TEXT NOT NULL,
    software_version TEXT NOT NULL
);
CREATE TABLE cases (
    id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    number INTEGER NOT NULL,
    truth TEXT NOT NULL CHECK (truth IN ('real', 'synthetic')),
    source_path TEXT NOT NULL,
    source_sha256 TEXT NOT NULL,
    UNIQUE (study_id, number)
);
CREATE TABLE readers (
    id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    name TEXT NOT NULL,
    added_at TEXT NOT NULL,
    UNIQUE (study_id, name)
);
CREATE TABLE reader_cases (
    reader_id INTEGER NOT NULL REFERENCES readers(id),
    case_id INTEGER NOT NULL REFERENCES cases(id),
    position INTEGER NOT NULL,
    queue INTEGER NOT NULL,
    skips INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (reader_id, case_id)
);
CREATE INDEX reader_cases_queue ON reader_cases (reader_id, queue);
CREATE TABLE answers (
    reader_id INTEGER NOT NULL REFERENCES readers(id),
    case_id INTEGER NOT NULL REFERENCES cases(id),
    values_json TEXT NOT NULL,
    seconds REAL,
    answered_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (reader_id, case_id)
);
CREATE TABLE answer_history (
    id INTEGER PRIMARY KEY,
    reader_id INTEGER NOT NULL REFERENCES readers(id),
    case_id INTEGER NOT NULL REFERENCES cases(id),
    revision INTEGER NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('answer', 'change')),
    values_json TEXT NOT NULL,
    seconds REAL,
    recorded_at TEXT NOT NULL
);
CREATE TABLE views (
    id INTEGER PRIMARY KEY,
    reader_id INTEGER NOT NULL REFERENCES readers(id),
    case_id INTEGER NOT NULL REFERENCES cases(id),
    opened_at REAL NOT NULL,
    closed_at REAL,
    seconds REAL,
    outcome TEXT CHECK (outcome IN ('answered', 'changed', 'skipped', 'abandoned'))
);
CREATE INDEX views_open ON views (reader_id, closed_at);
