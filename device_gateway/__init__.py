"""Device gateway: MQTT, the Bluetooth bridge and HTTP ingest; thin adapters onto the pipeline."""
