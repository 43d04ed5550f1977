-- 0003: guardrails: an approver's word on a machine, and the budget warnings already posted.
--
-- host_marks holds at most one row per machine. banned = 1 keeps the machine out of offers for
-- good; cleared_at forgives the failures recorded before it (they stop counting towards the
-- avoid window and "failed us N times"). The history in hosts is never rewritten.
CREATE TABLE host_marks (
    machine_id  INTEGER PRIMARY KEY,
    banned      INTEGER NOT NULL DEFAULT 0 CHECK (banned IN (0, 1)),
    cleared_at  REAL,
    reason      TEXT,
    by_id       INTEGER,
    by_name     TEXT,
    updated_at  REAL    NOT NULL
);

-- One row per budget warning posted: scope ('team' or 'user:<id>'), period ('day'/'week'), the
-- period's start and the level ('soft' or 'hard'). The primary key makes "post once per period"
-- a conditional insert that exactly one poster wins.
CREATE TABLE budget_alerts (
    scope         TEXT NOT NULL,
    period        TEXT NOT NULL,
    period_start  REAL NOT NULL,
    level         TEXT NOT NULL,
    ts            REAL NOT NULL,
    PRIMARY KEY (scope, period, period_start, level)
);

-- Rentals that billed during a window (audit, budgets): not ended, or ended after the window began.
CREATE INDEX rentals_ended ON rentals (ended_at);
-- events_by_kind(rental ids, kinds) for the audit: a rental's receipts, decisions, milestones.
CREATE INDEX events_rental_kind ON events (rental_id, kind, seq);
