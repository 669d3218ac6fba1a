output "kafka_bootstrap" {
  description = "Kafka bootstrap address (the load balancer): bootstrap.servers of every client."
  value       = "${google_compute_address.lb.address}:${var.kafka_port}"
}

output "mqtt_endpoint" {
  description = "MQTT address (the load balancer), host:port."
  value       = "${google_compute_address.lb.address}:${var.mqtt_port}"
}

output "broker_addresses" {
  description = "The address each node advertises to Kafka clients, by node id."
  value       = { for n in local.nodes : tostring(n.node_id) => "${length(var.advertised_hosts) > 0 ? var.advertised_hosts[n.index] : local.node_ips[n.index]}:${var.kafka_port}" }
}

output "node_ips" {
  description = "Fixed internal address of each node (meta and WAL peers; admin HTTP on admin_port), by node id."
  value       = { for n in local.nodes : tostring(n.node_id) => local.node_ips[n.index] }
}

output "meta_peers" {
  description = "The --meta-peers value the nodes run with."
  value       = local.meta_peers
}

output "wal_peers" {
  description = "The --wal-peers value the nodes run with."
  value       = local.wal_peers
}

output "bucket_name" {
  description = "Name of the GCS bucket holding the history."
  value       = google_storage_bucket.history.name
}

output "object_store_url" {
  description = "The --object-store URL of the nodes."
  value       = local.object_store_url
}

output "service_account_email" {
  description = "Email of the nodes' service account."
  value       = google_service_account.node.email
}
