"""Device gateway: MQTT, the Bluetooth bridge and HTTP ingest, all thin adapters onto the pipeline."""
