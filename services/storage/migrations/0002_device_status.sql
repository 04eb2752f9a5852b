-- Device status as the gateway sees it: last message, battery, signal, firmware, online (the
-- last-will message marks a meter offline). Fed by device_gateway; shown in the coach console.
ALTER TABLE devices
    ADD COLUMN last_seen_at timestamptz,
    ADD COLUMN online       boolean,
    ADD COLUMN battery_pct  smallint CHECK (battery_pct BETWEEN 0 AND 100),
    ADD COLUMN signal_dbm   smallint,
    ADD COLUMN firmware     text;
