-- 0001: the initial vastops schema: rentals, their events, approvals, host history, cost samples
-- and the watch engine's per-rental resume state.
--
-- Conventions: timestamps are REAL epoch seconds supplied by the caller's injected clock; JSON
-- columns hold compact JSON text (json_valid is checked so a bad write fails loudly). Enum-like
-- columns (state, status, kind) are validated by the Python StrEnums rather than CHECK lists, so
-- adding a state later does not need a table rebuild.

CREATE TABLE rentals (
    id                 INTEGER PRIMARY KEY,
    label              TEXT    NOT NULL UNIQUE,
    requester_id       INTEGER,
    requester_name     TEXT,
    offer_id           INTEGER,
    machine_id         INTEGER,
    host_id            INTEGER,
    gpu_name           TEXT,
    num_gpus           INTEGER,
    quoted_dph         REAL,
    dph_total          REAL,
    geolocation        TEXT,
    instance_id        INTEGER UNIQUE,
    state              TEXT    NOT NULL,
    state_reason       TEXT,
    request            TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(request)),
    created_at         REAL    NOT NULL,
    updated_at         REAL    NOT NULL,
    started_at         REAL,
    ended_at           REAL,
    comfyui_url        TEXT,
    tunnel_url         TEXT,
    status_channel_id  INTEGER,
    status_message_id  INTEGER
);
-- active_rentals()/list_rentals(states=...) newest first.
CREATE INDEX rentals_state_id ON rentals (state, id);
-- list_rentals(requester_id=...) and autocomplete, newest first.
CREATE INDEX rentals_requester_id ON rentals (requester_id, id);

CREATE TABLE events (
    id         INTEGER PRIMARY KEY,
    rental_id  INTEGER NOT NULL REFERENCES rentals (id),
    seq        INTEGER NOT NULL CHECK (seq > 0),
    ts         REAL    NOT NULL,
    kind       TEXT    NOT NULL,
    payload    TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(payload)),
    posted_at  REAL,
    UNIQUE (rental_id, seq)
);
-- The notifier's queue: small because delivered rows leave it.
CREATE INDEX events_unposted ON events (rental_id, seq) WHERE posted_at IS NULL;

CREATE TABLE approvals (
    id               INTEGER PRIMARY KEY,
    kind             TEXT    NOT NULL,
    rental_id        INTEGER REFERENCES rentals (id),
    requester_id     INTEGER,
    payload          TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(payload)),
    status           TEXT    NOT NULL,
    -- Bumped by every requote, so a button bound to an older quote can be refused.
    revision         INTEGER NOT NULL DEFAULT 1,
    created_at       REAL    NOT NULL,
    expires_at       REAL    NOT NULL,
    decided_at       REAL,
    decided_by       INTEGER,
    decided_by_name  TEXT,
    decision_note    TEXT,
    default_action   TEXT,
    channel_id       INTEGER,
    message_id       INTEGER
);
-- pending_approvals() and expire_due_approvals(now).
CREATE INDEX approvals_pending_expiry ON approvals (expires_at) WHERE status = 'pending';
CREATE INDEX approvals_rental ON approvals (rental_id);

CREATE TABLE hosts (
    id           INTEGER PRIMARY KEY,
    rental_id    INTEGER REFERENCES rentals (id),
    machine_id   INTEGER NOT NULL,
    host_id      INTEGER,
    geolocation  TEXT,
    outcome      TEXT    NOT NULL,
    reason       TEXT,
    ts           REAL    NOT NULL
);
-- machines_to_avoid(since).
CREATE INDEX hosts_outcome_ts ON hosts (outcome, ts);
CREATE INDEX hosts_machine_ts ON hosts (machine_id, ts);
CREATE INDEX hosts_rental ON hosts (rental_id);

CREATE TABLE cost_samples (
    id         INTEGER PRIMARY KEY,
    rental_id  INTEGER NOT NULL REFERENCES rentals (id),
    ts         REAL    NOT NULL,
    dph        REAL    NOT NULL,
    cost_usd   REAL    NOT NULL
);
-- latest_cost(rental_id).
CREATE INDEX cost_samples_rental_ts ON cost_samples (rental_id, ts);

CREATE TABLE watch_state (
    rental_id     INTEGER PRIMARY KEY REFERENCES rentals (id),
    log_offset    INTEGER NOT NULL DEFAULT 0 CHECK (log_offset >= 0),
    log_path      TEXT,
    -- Trust-on-first-use SSH host key of this instance.
    host_key      TEXT,
    ssh_endpoint  TEXT,
    data          TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(data)),
    updated_at    REAL    NOT NULL
);
