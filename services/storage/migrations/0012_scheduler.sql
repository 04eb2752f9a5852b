-- The time-driven half of alerting (`vigil scheduler`, alerting/scheduler.py): outreach records,
-- paging, the on-call roster, emergency-contact notifications, member messages (nudges and the
-- app inbox) and the scheduler's per-job lock rows.

-- Where a page reaches a coach (SMS or voice through the provider, alerting/notifier.py).
-- Never logged (as with members' phone numbers, docs/onboarding.md "Privacy").
ALTER TABLE coaches ADD COLUMN phone text CHECK (length(phone) BETWEEN 3 AND 40);

-- A coach's attempts to reach a member. The console records them (alerting/outreach.py,
-- `record_outreach`); the scheduler reads them for the first-outreach deadline of a claimed
-- critical alert and for "unreachable after a critical low". Minutes are numeric: time spent
-- counts towards treatment-management billing (CPT 99457/99458), and money-adjacent sums are
-- never floats.
CREATE TABLE outreach (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id         bigint REFERENCES alerts (id),  -- NULL: routine outreach, not about an alert
    member_id        text NOT NULL REFERENCES members (id),
    coach_id         text NOT NULL REFERENCES coaches (id),
    mode             text NOT NULL CHECK (mode IN ('phone_call', 'video', 'sms', 'voicemail')),
    outcome          text NOT NULL CHECK (outcome IN ('reached', 'no_answer',
                                                      'escalated_to_clinician',
                                                      'emergency_services')),
    started_at       timestamptz NOT NULL,
    duration_minutes numeric(6, 2) NOT NULL DEFAULT 0 CHECK (duration_minutes >= 0),
    note             text NOT NULL DEFAULT '',
    recorded_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outreach_alert ON outreach (alert_id, started_at) WHERE alert_id IS NOT NULL;
CREATE INDEX outreach_member ON outreach (member_id, started_at DESC);

-- Notifications to people other than coaches. One emergency-contact notification per alert at
-- most, by this unique key, however many scheduler processes notice the same unreachable member.
-- A row is written first (pending) and sent after, so a provider outage is retried, not lost.
CREATE TABLE notifications (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id        bigint NOT NULL REFERENCES alerts (id),
    member_id       text NOT NULL REFERENCES members (id),
    kind            text NOT NULL CHECK (kind IN ('emergency_contact')),
    channel         text NOT NULL CHECK (channel IN ('sms', 'voice')),
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sent', 'failed', 'no_contact')),
    created_at      timestamptz NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    last_attempt_at timestamptz,
    sent_at         timestamptz,
    provider_status text,
    provider_id     text,
    UNIQUE (alert_id, kind)
);
CREATE INDEX notifications_pending ON notifications (id) WHERE status = 'pending';

-- The on-call roster: who is paged for a team outside the client's coverage hours. One coach on
-- call per team at a time, enforced here (btree_gist is created in 0001).
CREATE TABLE on_call (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    coach_id  text NOT NULL REFERENCES coaches (id),
    team      text NOT NULL,
    starts_at timestamptz NOT NULL,
    ends_at   timestamptz NOT NULL,
    CHECK (ends_at > starts_at),
    EXCLUDE USING gist (team WITH =, tstzrange(starts_at, ends_at) WITH &&)
);

-- Every page sent for an alert, to whom, how, and what the provider said. A row is written
-- ('sending') before the provider is called and updated after, so a page in flight when the
-- process died is visible.
CREATE TABLE pages (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id        bigint NOT NULL REFERENCES alerts (id),
    coach_id        text NOT NULL REFERENCES coaches (id),
    reason          text NOT NULL CHECK (reason IN ('page', 'repage', 'escalation')),
    channel         text NOT NULL CHECK (channel IN ('sms', 'voice')),
    sent_at         timestamptz NOT NULL,
    provider_status text NOT NULL DEFAULT 'sending',
    provider_id     text
);
CREATE INDEX pages_alert ON pages (alert_id, sent_at);

-- Messages to the member: nudges from the education-content library (alerting/content) and,
-- later, messages from coaches. Delivered to the member's devices over MQTT (`messages` topic)
-- from `deliver_after` on, and readable in the app (GET /v1/me/messages). `dedupe_key` makes
-- each trigger produce one message at most (an alert, a week, a gap in testing).
CREATE TABLE member_messages (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    member_id         text NOT NULL REFERENCES members (id),
    kind              text NOT NULL
                      CHECK (kind IN ('low_treatment', 'encouragement', 'missed_testing', 'coach')),
    template          text NOT NULL,
    body              text NOT NULL,
    language          text NOT NULL,
    created_at        timestamptz NOT NULL,
    deliver_after     timestamptz NOT NULL,
    delivered_mqtt_at timestamptz,
    read_at           timestamptz,
    alert_id          bigint REFERENCES alerts (id),
    dedupe_key        text NOT NULL,
    UNIQUE (member_id, dedupe_key)
);
CREATE INDEX member_messages_inbox ON member_messages (member_id, deliver_after DESC);
CREATE INDEX member_messages_undelivered ON member_messages (deliver_after)
    WHERE delivered_mqtt_at IS NULL;

-- One row per scheduler job: locked (FOR UPDATE SKIP LOCKED) by the process running the job's
-- tick, so N scheduler processes run each job once at a time; `last_run_at` spaces jobs that
-- run every N minutes across all processes, not per process.
CREATE TABLE scheduler_jobs (
    name        text PRIMARY KEY,
    last_run_at timestamptz,
    last_ok_at  timestamptz,
    last_error  text,
    run_by      text
);
