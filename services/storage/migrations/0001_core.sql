-- Vigil core schema: organisation, devices, readings, the identity ledger and quarantine.
-- Plain PostgreSQL 15+. Everything TimescaleDB-specific lives in services/storage/timescale.py,
-- which converts `readings` to a hypertable and `reading_rollup_hourly` to a continuous aggregate
-- when the extension is present; the columns and semantics stay the same.

CREATE EXTENSION IF NOT EXISTS btree_gist;  -- exclusion constraints on (id, range); trusted, in contrib

CREATE TABLE vigil_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE programs (
    id          text PRIMARY KEY,
    pppm_billed boolean NOT NULL
);
INSERT INTO programs (id, pppm_billed) VALUES
    ('diabetes', true), ('hypertension', true), ('weight_management', true),
    ('behavioral_health', false);

CREATE TABLE clients (
    id                   text PRIMARY KEY,
    name                 text NOT NULL,
    timezone             text NOT NULL,
    currency             char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    has_eligibility_file boolean NOT NULL DEFAULT false,
    created_at           timestamptz NOT NULL DEFAULT now()
);

-- A client's dated contract terms never overlap (enforced here, not only in the importer).
CREATE TABLE contracts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id       text NOT NULL REFERENCES clients (id),
    start_date      date NOT NULL,
    end_date        date NOT NULL,
    min_readings    integer NOT NULL DEFAULT 1 CHECK (min_readings >= 1),
    bundle_fallback text NOT NULL DEFAULT 'error' CHECK (bundle_fallback IN ('error', 'sum')),
    CHECK (end_date >= start_date),
    UNIQUE (client_id, start_date),
    EXCLUDE USING gist (client_id WITH =, daterange(start_date, end_date, '[]') WITH &&)
);

-- Unit price per active member per month, keyed by the (sorted) set of PPPM programs.
CREATE TABLE contract_prices (
    contract_id bigint NOT NULL REFERENCES contracts (id) ON DELETE CASCADE,
    programs    text[] NOT NULL CHECK (cardinality(programs) >= 1),
    unit_price  numeric(12, 2) NOT NULL CHECK (unit_price >= 0),
    PRIMARY KEY (contract_id, programs)
);

CREATE TABLE contract_device_prices (
    contract_id bigint NOT NULL REFERENCES contracts (id) ON DELETE CASCADE,
    device_kind text NOT NULL,
    unit_price  numeric(12, 2) NOT NULL CHECK (unit_price >= 0),
    PRIMARY KEY (contract_id, device_kind)
);

CREATE TABLE coaches (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    role       text NOT NULL DEFAULT 'coach' CHECK (role IN ('coach', 'supervisor', 'admin')),
    credential text NOT NULL DEFAULT 'none' CHECK (credential IN ('RN', 'CDCES', 'RD', 'none')),
    team       text,
    email      text
);

CREATE TABLE members (
    id                    text PRIMARY KEY,
    client_id             text NOT NULL REFERENCES clients (id),
    name                  text NOT NULL,
    birth_date            date NOT NULL,
    phone                 text,
    emergency_contact     jsonb,
    language              text NOT NULL DEFAULT 'en',
    timezone              text NOT NULL,
    consent_to_monitoring boolean NOT NULL DEFAULT true,
    external_id           text,
    coach_id              text REFERENCES coaches (id),
    created_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (client_id, external_id)
);
CREATE INDEX members_client ON members (client_id);
CREATE INDEX members_coach ON members (coach_id);

CREATE TABLE care_plans (
    member_id  text PRIMARY KEY REFERENCES members (id),
    conditions text[] NOT NULL DEFAULT '{}',
    overrides  jsonb NOT NULL DEFAULT '[]',
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE enrollments (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    member_id  text NOT NULL REFERENCES members (id),
    program    text NOT NULL REFERENCES programs (id),
    start_date date NOT NULL,
    end_date   date,
    CHECK (end_date IS NULL OR end_date >= start_date),
    UNIQUE (member_id, program, start_date),
    EXCLUDE USING gist (member_id WITH =, program WITH =,
                        daterange(start_date, end_date, '[]') WITH &&)
);

CREATE TABLE devices (
    id              text PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('glucose_meter', 'bp_monitor', 'scale', 'cgm')),
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked', 'retired')),
    in_service_from date,
    shipped_on      date,
    -- The device's current sequence epoch (see reading_keys); raised by the pipeline when the
    -- device reuses a sequence number for a later reading.
    seq_epoch       integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Who held a device when. Intervals are half-open [assigned_from, assigned_to), computed from the
-- onboarding file's dates at midnight in the member's time zone; NULL bounds are open. One holder
-- at a time, enforced by the database.
CREATE TABLE device_assignments (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id     text NOT NULL REFERENCES devices (id),
    member_id     text NOT NULL REFERENCES members (id),
    assigned_from timestamptz,
    assigned_to   timestamptz,
    CHECK (assigned_to IS NULL OR assigned_from IS NULL OR assigned_to > assigned_from),
    EXCLUDE USING gist (device_id WITH =, tstzrange(assigned_from, assigned_to) WITH &&)
);
CREATE INDEX device_assignments_member ON device_assignments (member_id);

-- The identity ledger: one row per stored reading, keyed by what the device reported. It is a plain
-- table (never a hypertable) so that uniqueness does not depend on the partitioning time: a resend
-- of a clock-corrected reading carries a new receive time but the same (device_id, seq, content).
-- seq_epoch increments when a device reuses a sequence number for a later reading (16-bit wrap,
-- memory or clock reset).
CREATE TABLE reading_keys (
    device_id       text NOT NULL,
    seq_epoch       integer NOT NULL,
    seq             bigint NOT NULL,
    content_hash    bytea NOT NULL,
    measured_at     timestamptz NOT NULL,
    effective_at    timestamptz NOT NULL,
    clock_corrected boolean NOT NULL,
    -- (device_id, seq) first: every lookup is "this device's seq n, in any epoch". Same
    -- content in the same slot is a duplicate; the pipeline compares content_hash.
    PRIMARY KEY (device_id, seq, seq_epoch)
);

-- Accepted readings. Originals (value, unit, device time and its UTC offset) are kept beside the
-- normalized values (glucose mg/dL, pressure mmHg, weight kg). `effective_at` is the time every
-- clinical rule, device assignment and invoice uses: the device time, or the receive time when the
-- device clock was implausible (clock_corrected).
CREATE TABLE readings (
    device_id          text NOT NULL,
    seq_epoch          integer NOT NULL,
    seq                bigint NOT NULL,
    effective_at       timestamptz NOT NULL,
    member_id          text NOT NULL,
    kind               text NOT NULL CHECK (kind IN ('glucose', 'blood_pressure', 'weight')),
    source             text NOT NULL CHECK (source IN ('device', 'manual', 'cgm')),
    measured_at        timestamptz NOT NULL,
    measured_offset    smallint NOT NULL,
    received_at        timestamptz NOT NULL,
    clock_corrected    boolean NOT NULL DEFAULT false,
    flags              text[] NOT NULL DEFAULT '{}',
    unit               text NOT NULL,
    value              numeric,
    systolic           numeric,
    diastolic          numeric,
    mean_arterial      numeric,
    pulse              numeric,
    meal               text,
    glucose_mgdl       numeric,
    systolic_mmhg      numeric,
    diastolic_mmhg     numeric,
    mean_arterial_mmhg numeric,
    weight_kg          numeric,
    transport          text NOT NULL,
    content_hash       bytea NOT NULL
);
-- TimescaleDB needs the partitioning column in every unique index: effective_at is here.
CREATE UNIQUE INDEX readings_identity ON readings (device_id, seq_epoch, seq, effective_at);
CREATE INDEX readings_member_time ON readings (member_id, effective_at DESC);

-- Hourly rollup per member and kind, for windowed rules and reports. Control-solution readings are
-- excluded. `primary_*` is glucose mg/dL, systolic mmHg or weight kg by kind.
-- With TimescaleDB, `reading_rollup_hourly` is a continuous aggregate (materialized_only = false).
-- On plain PostgreSQL the same mechanism is built here: a materialized table refreshed up to a
-- watermark (services/storage/rollups.py), and a view that adds the live aggregate of readings
-- past the watermark, so today's readings are always visible and ingest pays nothing for it.
CREATE TABLE reading_rollup_hourly_materialized (
    member_id     text NOT NULL,
    kind          text NOT NULL,
    bucket        timestamptz NOT NULL,
    n             bigint NOT NULL,
    n_values      bigint NOT NULL,
    primary_sum   numeric,
    primary_min   numeric,
    primary_max   numeric,
    diastolic_sum numeric,
    PRIMARY KEY (member_id, kind, bucket)
);
INSERT INTO vigil_meta (key, value) VALUES ('rollup_watermark', '-infinity');

CREATE VIEW reading_rollup_hourly AS
SELECT member_id, kind, bucket, n, n_values, primary_sum, primary_min, primary_max, diastolic_sum
FROM reading_rollup_hourly_materialized
WHERE bucket < (SELECT value::timestamptz FROM vigil_meta WHERE key = 'rollup_watermark')
UNION ALL
SELECT member_id,
       kind,
       date_trunc('hour', effective_at, 'UTC') AS bucket,
       count(*) AS n,
       count(coalesce(glucose_mgdl, systolic_mmhg, weight_kg)) AS n_values,
       sum(coalesce(glucose_mgdl, systolic_mmhg, weight_kg)) AS primary_sum,
       min(coalesce(glucose_mgdl, systolic_mmhg, weight_kg)) AS primary_min,
       max(coalesce(glucose_mgdl, systolic_mmhg, weight_kg)) AS primary_max,
       sum(diastolic_mmhg) AS diastolic_sum
FROM readings
WHERE effective_at >= (SELECT value::timestamptz FROM vigil_meta WHERE key = 'rollup_watermark')
  AND NOT ('control_solution' = ANY (flags))
GROUP BY member_id, kind, date_trunc('hour', effective_at, 'UTC');

-- Every rejected reading, with its raw payload and reason: nothing a device sent is lost.
CREATE TABLE quarantine (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at    timestamptz NOT NULL,
    transport      text NOT NULL,
    device_id      text,
    seq            bigint,
    reason         text NOT NULL,
    detail         text NOT NULL,
    raw            bytea NOT NULL,
    status         text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
    attempts       integer NOT NULL DEFAULT 1,
    last_attempt   timestamptz NOT NULL,
    resolved_at    timestamptz,
    resolution     text
);
CREATE INDEX quarantine_open ON quarantine (reason, id) WHERE status = 'open';
CREATE INDEX quarantine_device ON quarantine (device_id, id);
