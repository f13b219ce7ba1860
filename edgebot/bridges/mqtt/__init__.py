"""edgebot-mqtt: the bridge between an MQTT broker and the edgebot bus."""
