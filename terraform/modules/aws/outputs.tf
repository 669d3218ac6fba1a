output "kafka_bootstrap" {
  description = "Kafka bootstrap address (the NLB): bootstrap.servers of every client."
  value       = "${aws_lb.this.dns_name}:${var.kafka_port}"
}

output "mqtt_endpoint" {
  description = "MQTT address (the NLB), host:port."
  value       = "${aws_lb.this.dns_name}:${var.mqtt_port}"
}

output "broker_addresses" {
  description = "The address each node advertises to Kafka clients, by node id."
  value       = { for n in local.nodes : tostring(n.node_id) => "${aws_lb.this.dns_name}:${var.broker_port_base + n.node_id}" }
}

output "node_private_ips" {
  description = "Stable private address of each node (meta and WAL peers; admin HTTP on admin_port), by node id."
  value       = { for n in local.nodes : tostring(n.node_id) => local.peer_ips[n.index] }
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
  description = "Name of the S3 bucket holding the history."
  value       = aws_s3_bucket.history.bucket
}

output "object_store_url" {
  description = "The --object-store URL of the nodes."
  value       = local.object_store_url
}

output "kms_key_arn" {
  description = "ARN of the KMS key encrypting the bucket, the volumes and the logs."
  value       = aws_kms_key.this.arn
}

output "node_role_arn" {
  description = "ARN of the IAM role of the nodes."
  value       = aws_iam_role.node.arn
}

output "security_group_id" {
  description = "Security group of the nodes (add rules for extra clients here)."
  value       = aws_security_group.node.id
}

output "lambda_function_url" {
  description = "URL of the Lambda function (produce/fetch over HTTP); null while lambda_artifact_path is unset."
  value       = local.lambda_enabled ? aws_lambda_function_url.http[0].function_url : null
}
