-- The member app API (services/api): eligibility rows, app tokens and idempotent request replies.

-- A client's eligibility file, one row per eligible span of a person the client names by its own
-- external id. Checked at signup only for clients with has_eligibility_file; for the others every
-- imported member is eligible. Dates are days in the member's time zone, both ends inclusive; an
-- open end (NULL) means "until further notice".
CREATE TABLE member_eligibility (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id     text NOT NULL REFERENCES clients (id),
    external_id   text NOT NULL,
    birth_date    date NOT NULL,
    eligible_from date NOT NULL,
    eligible_to   date,
    CHECK (eligible_to IS NULL OR eligible_to >= eligible_from),
    UNIQUE (client_id, external_id, eligible_from)
);

-- Bearer tokens of the member app. Only the SHA-256 of the token's 32 random bytes is stored:
-- a copy of this table does not let anyone act as a member.
CREATE TABLE app_tokens (
    token_hash bytea PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    member_id  text NOT NULL REFERENCES members (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    CHECK (expires_at > created_at)
);
CREATE INDEX app_tokens_member_live ON app_tokens (member_id) WHERE revoked_at IS NULL;

-- Idempotency-Key replies, per member: a resend with the same key gets the stored reply, byte for
-- byte (the API serializes it canonically), and stores nothing twice. `response` is NULL while the
-- first request is being processed (a reservation); a reservation older than a few minutes belongs
-- to a crashed process and may be taken over.
CREATE TABLE api_idempotency (
    member_id      text NOT NULL REFERENCES members (id),
    key            text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_sha256 bytea NOT NULL CHECK (octet_length(request_sha256) = 32),
    status         smallint,
    response       jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((status IS NULL) = (response IS NULL)),
    PRIMARY KEY (member_id, key)
);
