"""Broker provisioning: local Apache Kafka (KRaft) from Maven Central, topic declarations."""
