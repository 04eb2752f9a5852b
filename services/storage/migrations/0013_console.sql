-- The coach console (coach_console/, docs/console.md): console accounts, server-side sessions,
-- login attempts (lockout), alert notes, follow-up timers, care-plan history and the append-only
-- audit log. Outreach records live in `outreach` (0012_scheduler.sql), shared with the scheduler.

-- A console login for a coach, supervisor or admin (one per `coaches` row; the login name is the
-- coach id). Passwords are argon2id hashes (argon2-cffi, RFC 9106 parameters); the TOTP secret
-- (RFC 6238, base32) is NULL until enrolled with `vigil users enroll-totp`. `totp_last_step` is the 30-second step of the
-- last accepted code, so a code is accepted once (RFC 6238 section 5.2: no replay).
CREATE TABLE console_accounts (
    coach_id            text PRIMARY KEY REFERENCES coaches (id) ON DELETE CASCADE,
    password_hash       text NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    totp_secret         text CHECK (totp_secret ~ '^[A-Z2-7]{32}$'),
    totp_last_step      bigint,
    disabled            boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now(),
    password_changed_at timestamptz NOT NULL DEFAULT now()
);

-- Server-side sessions. The cookie carries 32 random bytes; only their SHA-256 is stored, so a
-- copy of this table does not let anyone act as a coach. `mfa_pending`: the password was right
-- and the TOTP code is still due; such a session opens nothing but the code form.
CREATE TABLE console_sessions (
    token_hash   bytea PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    coach_id     text NOT NULL REFERENCES coaches (id) ON DELETE CASCADE,
    csrf_token   text NOT NULL CHECK (length(csrf_token) >= 32),
    mfa_pending  boolean NOT NULL,
    created_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    ended_at     timestamptz,
    end_reason   text CHECK (end_reason IN ('logout', 'idle', 'expired', 'disabled',
                                            'mfa_completed')),
    CHECK ((ended_at IS NULL) = (end_reason IS NULL))
);
CREATE INDEX console_sessions_live ON console_sessions (coach_id) WHERE ended_at IS NULL;

-- Every login attempt by the login name typed (no foreign key: attempts on unknown names count
-- too, and the lockout answers them the same way, so the form is no account oracle).
CREATE TABLE console_login_attempts (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    login   text NOT NULL,
    at      timestamptz NOT NULL,
    stage   text NOT NULL CHECK (stage IN ('password', 'totp')),
    success boolean NOT NULL
);
CREATE INDEX console_login_attempts_login ON console_login_attempts (login, at DESC);

-- Free-text notes a coach keeps on an alert.
CREATE TABLE alert_notes (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id  bigint NOT NULL REFERENCES alerts (id),
    member_id text NOT NULL REFERENCES members (id),
    coach_id  text NOT NULL REFERENCES coaches (id),
    at        timestamptz NOT NULL,
    body      text NOT NULL CHECK (length(body) BETWEEN 1 AND 4000)
);
CREATE INDEX alert_notes_alert ON alert_notes (alert_id, at);

-- "Recheck in 15 minutes" (ADA: recheck 15 minutes after treating a level-1 low). When due, the
-- console announces it once (announced_at, taken FOR UPDATE SKIP LOCKED by any console process)
-- and the alert returns to the top of its coach's queue until the recheck is done.
CREATE TABLE alert_followups (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id     bigint NOT NULL REFERENCES alerts (id),
    coach_id     text NOT NULL REFERENCES coaches (id),
    created_by   text NOT NULL REFERENCES coaches (id),
    created_at   timestamptz NOT NULL,
    due_at       timestamptz NOT NULL,
    announced_at timestamptz,
    done_at      timestamptz,
    CHECK (due_at > created_at)
);
CREATE INDEX alert_followups_pending ON alert_followups (due_at)
    WHERE done_at IS NULL AND announced_at IS NULL;
CREATE INDEX alert_followups_open ON alert_followups (alert_id) WHERE done_at IS NULL;

-- Care-plan changes: who, when, why, and the plan before and after. Only a clinically
-- credentialed supervisor edits thresholds (alerting.thresholds.validate_override).
CREATE TABLE care_plan_history (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    member_id         text NOT NULL REFERENCES members (id),
    changed_by        text NOT NULL REFERENCES coaches (id),
    changed_at        timestamptz NOT NULL,
    reason            text NOT NULL CHECK (length(btrim(reason)) BETWEEN 5 AND 1000),
    conditions_before text[],
    conditions_after  text[] NOT NULL,
    overrides_before  jsonb,
    overrides_after   jsonb NOT NULL
);
CREATE INDEX care_plan_history_member ON care_plan_history (member_id, changed_at DESC);

-- Who did or saw what, when: every view of a member's data and every action, from the console
-- and from CLI commands (coach_console.audit.audit). Append-only, enforced here: UPDATE, DELETE
-- and TRUNCATE raise whoever runs them (HIPAA 45 CFR 164.312(b) audit controls; the record must
-- not be editable by the people it records). No foreign keys: the log outlives what it names.
CREATE TABLE audit_log (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor     text NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
    action    text NOT NULL CHECK (action ~ '^[a-z][a-z0-9_.]{1,63}$'),
    member_id text,
    detail    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at DESC);
CREATE INDEX audit_log_member ON audit_log (member_id, at DESC) WHERE member_id IS NOT NULL;
CREATE INDEX audit_log_actor ON audit_log (actor, at DESC);

CREATE FUNCTION refuse_change_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION refuse_change_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change_append_only();
-- Care-plan history is append-only row by row; TRUNCATE is left to the test fixtures, which
-- empty members (and with CASCADE this table) between tests.
CREATE TRIGGER care_plan_history_append_only BEFORE UPDATE OR DELETE ON care_plan_history
    FOR EACH ROW EXECUTE FUNCTION refuse_change_append_only();
