"""The MQTT device gateway: topics, acks after commit, and the gateway worker."""
