-- Per-device MQTT credentials (services/devices.py, docs/devices.md). The MQTT username is the
-- device id. Only a hash of the password is stored, in Mosquitto's own `$7$` PBKDF2-SHA512 form,
-- because the broker's password file is generated from this table (device_gateway/broker.py); the
-- password itself is shown once by `vigil devices provision` and kept nowhere.
-- A device has at most one live credential; rotated and revoked ones stay as its history.
CREATE TABLE device_credentials (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id     text NOT NULL REFERENCES devices (id),
    password_hash text NOT NULL
        CHECK (password_hash ~ '^\$7\$[0-9]+\$[A-Za-z0-9+/]+=*\$[A-Za-z0-9+/]+=*$'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);
CREATE UNIQUE INDEX device_credentials_live ON device_credentials (device_id)
    WHERE revoked_at IS NULL;
