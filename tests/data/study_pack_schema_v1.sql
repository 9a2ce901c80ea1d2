-- The study pack's on-disk layout, version 1 (engine/study/pack.py). Frozen: never edit;
-- a new layout gets a new version, a new frozen copy and a migration.
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE cases (
    id INTEGER PRIMARY KEY,
    number INTEGER NOT NULL UNIQUE,
    data BLOB NOT NULL,
    data_sha256 TEXT NOT NULL
);
CREATE TABLE readers (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
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
    recorded_at TEXT NOT NULL,
    mac TEXT NOT NULL
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
