-- Alerts raised by the rule engine (alerting/), their readings and their history.
-- One active alert per (member, rule), enforced here (not by a lock in memory), so several
-- gateway processes evaluating concurrently can never raise a twin.

-- Per-client alerting policy (SLA minutes, cool-down, paging coverage): JSON overrides of the
-- defaults in alerting/policy.py.
ALTER TABLE clients ADD COLUMN alert_policy jsonb NOT NULL DEFAULT '{}';

CREATE TABLE alerts (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    member_id             text NOT NULL REFERENCES members (id),
    rule                  text NOT NULL,
    tier                  text NOT NULL CHECK (tier IN ('critical', 'high', 'medium', 'low')),
    status                text NOT NULL DEFAULT 'open'
                          CHECK (status IN ('open', 'acknowledged', 'resolved')),
    retrospective         boolean NOT NULL DEFAULT false,
    opened_at             timestamptz NOT NULL DEFAULT now(),
    first_reading_at      timestamptz,
    last_reading_at       timestamptz,
    count                 integer NOT NULL DEFAULT 1,
    latest_value          numeric,
    worst_value           numeric,
    unit                  text,
    worse                 text NOT NULL DEFAULT 'high' CHECK (worse IN ('low', 'high')),
    detail                jsonb NOT NULL DEFAULT '{}',
    sla_due_at            timestamptz NOT NULL,
    acknowledged_at       timestamptz,
    acknowledged_by       text REFERENCES coaches (id),
    first_outreach_due_at timestamptz,
    escalated_at          timestamptz,
    last_paged_at         timestamptz,
    resolved_at           timestamptz,
    resolved_by           text REFERENCES coaches (id),
    outcome               text,
    note                  text,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'resolved') = (resolved_at IS NOT NULL))
);
CREATE UNIQUE INDEX alerts_one_active ON alerts (member_id, rule)
    WHERE status IN ('open', 'acknowledged');
CREATE INDEX alerts_queue ON alerts (retrospective, tier, sla_due_at)
    WHERE status IN ('open', 'acknowledged');
CREATE INDEX alerts_member ON alerts (member_id, opened_at DESC);

-- The readings behind each alert. A reading attaches once, so re-evaluating it (a retry, a
-- second process) never counts it twice.
CREATE TABLE alert_readings (
    alert_id     bigint NOT NULL REFERENCES alerts (id),
    device_id    text NOT NULL,
    seq_epoch    integer NOT NULL,
    seq          bigint NOT NULL,
    effective_at timestamptz NOT NULL,
    value        numeric,
    PRIMARY KEY (alert_id, device_id, seq_epoch, seq)
);

-- Append-only history of every alert: opened, reading attached, tier raised, made live,
-- acknowledged, re-notified, escalated, paged, resolved, suppressed (cool-down).
CREATE TABLE alert_events (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id bigint REFERENCES alerts (id),
    member_id text NOT NULL,
    rule     text NOT NULL,
    at       timestamptz NOT NULL DEFAULT now(),
    kind     text NOT NULL,
    actor    text,
    detail   jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX alert_events_alert ON alert_events (alert_id, at);

-- The rule engine's outbox: one row per stored batch, written in the batch's own transaction and
-- deleted once its readings were evaluated. A process that dies between the commit and the
-- evaluation leaves the row behind, and the sweeper (gateway workers, `vigil scheduler`)
-- evaluates it: no stored reading escapes the rules.
CREATE TABLE rule_outbox (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    device_ids text[] NOT NULL,
    seq_epochs integer[] NOT NULL,
    seqs       bigint[] NOT NULL,
    attempts   integer NOT NULL DEFAULT 0
);
