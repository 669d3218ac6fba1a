# A 3-node StrataMQ cluster in an existing VPC: three private subnets in three zones, every
# node running the meta, wal and broker roles on i4i.large (local NVMe for the WAL), the
# history in a new S3 bucket, Kafka and MQTT behind an internal NLB.

variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "vpc_id" {
  description = "Existing VPC."
  type        = string
}

variable "private_subnet_ids" {
  description = "Three private subnets in three availability zones, with a NAT gateway or VPC endpoints for S3, ECR, EC2 and CloudWatch Logs."
  type        = list(string)
}

variable "strata_image" {
  description = "strata container image in ECR, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/strata:0.1.0."
  type        = string
}

variable "client_cidrs" {
  description = "Networks of the Kafka and MQTT clients."
  type        = list(string)
  default     = ["10.0.0.0/8"]
}

variable "alarm_topic_arn" {
  description = "SNS topic for the CloudWatch alarms; null sends no notifications."
  type        = string
  default     = null
}

variable "lambda_artifact_path" {
  description = "Lambda zip built by deploy/lambda/package.py (null: no Lambda function)."
  type        = string
  default     = null
}

module "strata" {
  source = "../../modules/aws"

  name                 = "strata-prod"
  vpc_id               = var.vpc_id
  subnet_ids           = var.private_subnet_ids
  node_count           = 3
  instance_type        = "i4i.large"
  strata_image         = var.strata_image
  allowed_client_cidrs = var.client_cidrs
  allowed_admin_cidrs  = var.client_cidrs
  alarm_actions        = var.alarm_topic_arn == null ? [] : [var.alarm_topic_arn]
  lambda_artifact_path = var.lambda_artifact_path

  tags = {
    environment = "production"
  }
}

output "kafka_bootstrap" {
  description = "bootstrap.servers for Kafka clients."
  value       = module.strata.kafka_bootstrap
}

output "mqtt_endpoint" {
  description = "MQTT host:port."
  value       = module.strata.mqtt_endpoint
}

output "broker_addresses" {
  description = "Per-broker advertised addresses."
  value       = module.strata.broker_addresses
}

output "bucket_name" {
  description = "History bucket."
  value       = module.strata.bucket_name
}

output "lambda_function_url" {
  description = "Lambda function URL (null until lambda_artifact_path is set)."
  value       = module.strata.lambda_function_url
}
