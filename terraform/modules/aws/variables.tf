# Inputs of the AWS module. Every variable here has a row in README.md (a test checks it).

variable "name" {
  description = "Name of the cluster: prefix of every resource and the value of the strata-cluster tag."
  type        = string
  default     = "strata"

  validation {
    # Load balancer and target group names ("<name>-broker-9") are limited to 32 characters.
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.name))
    error_message = "name must be 2-21 characters of lower-case letters, digits and '-', starting with a letter."
  }
}

variable "vpc_id" {
  description = "VPC the nodes, the NLB and the Lambda function run in."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets, one per availability zone; node i is placed in subnet_ids[i % length(subnet_ids)]."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0
    error_message = "subnet_ids must name at least one subnet."
  }
}

variable "node_count" {
  description = "Number of nodes. Each runs the meta, wal and broker roles; use 3 or 5 (an odd number) for a raft majority and a WAL quorum."
  type        = number
  default     = 3

  validation {
    condition     = var.node_count >= 1 && var.node_count <= 9
    error_message = "node_count must be between 1 and 9."
  }
}

variable "instance_type" {
  description = "EC2 instance type. It must have a local NVMe instance-store volume: the WAL and the read cache live there (i4i, i4g, im4gn, is4gen, m6id, c6id, r6id ...)."
  type        = string
  default     = "i4i.large"
}

variable "ami_id" {
  description = "AMI of the nodes; null picks the latest Amazon Linux 2023 for the architecture. The user data needs bash, docker (dnf) and the AWS CLI."
  type        = string
  default     = null
}

variable "architecture" {
  description = "CPU architecture of the AMI looked up when ami_id is null and of the Lambda function: x86_64 or arm64."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be x86_64 or arm64."
  }
}

variable "strata_image" {
  description = "Container image of strata (built from deploy/docker/Dockerfile and pushed to a registry the nodes reach, e.g. ECR)."
  type        = string
}

variable "bucket_name" {
  description = "Name of the S3 bucket created for the history; null derives one from name and the account id."
  type        = string
  default     = null
}

variable "object_prefix" {
  description = "Key prefix of every object strata writes in the bucket."
  type        = string
  default     = "strata"
}

variable "force_destroy" {
  description = "Let terraform destroy delete a bucket that still holds objects. Leave false in production."
  type        = bool
  default     = false
}

variable "noncurrent_version_expiration_days" {
  description = "Days a replaced or deleted object version is kept (the bucket is versioned; strata itself deletes garbage and expired data)."
  type        = number
  default     = 7
}

variable "abort_incomplete_multipart_days" {
  description = "Days after which the parts of an unfinished multipart upload (a crash mid-upload) are deleted."
  type        = number
  default     = 1
}

variable "kafka_port" {
  description = "Kafka listener port on the nodes and the bootstrap port of the NLB."
  type        = number
  default     = 9092
}

variable "mqtt_port" {
  description = "MQTT listener port on the nodes and on the NLB."
  type        = number
  default     = 1883
}

variable "admin_port" {
  description = "Admin HTTP port (/health, /metrics, REST): NLB health checks; reachable from allowed_admin_cidrs only."
  type        = number
  default     = 8080
}

variable "meta_port" {
  description = "Meta gRPC port (raft and the control API) between the nodes."
  type        = number
  default     = 1228
}

variable "wal_port" {
  description = "WAL replication port between the nodes."
  type        = number
  default     = 1778
}

variable "broker_port_base" {
  description = "Node i (1-based) is advertised to Kafka clients as <NLB DNS>:broker_port_base+i; the NLB forwards that port to node i only."
  type        = number
  default     = 9100
}

variable "nlb_internal" {
  description = "Make the network load balancer internal (reachable from the VPC and peered networks) instead of internet-facing."
  type        = bool
  default     = true
}

variable "nlb_deletion_protection" {
  description = "Turn on deletion protection of the NLB."
  type        = bool
  default     = true
}

variable "nlb_access_logs_bucket" {
  description = "Existing S3 bucket for NLB access logs; null turns access logs off."
  type        = string
  default     = null
}

variable "allowed_client_cidrs" {
  description = "CIDR blocks allowed to reach the Kafka and MQTT ports (through the NLB, which keeps client addresses)."
  type        = list(string)
}

variable "allowed_admin_cidrs" {
  description = "CIDR blocks allowed to reach the admin HTTP port directly on the nodes (operators, Prometheus)."
  type        = list(string)
  default     = []
}

variable "egress_cidrs" {
  description = "CIDR blocks the nodes may connect to on 443 (S3, ECR, CloudWatch; through a NAT gateway or VPC endpoints)."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "root_volume_size_gb" {
  description = "Size of each node's encrypted gp3 root volume, in GiB."
  type        = number
  default     = 30
}

variable "meta_volume_size_gb" {
  description = "Size of each node's persistent, encrypted gp3 volume for the metadata raft log (survives instance replacement), in GiB."
  type        = number
  default     = 20
}

variable "wal_bytes_max" {
  description = "wal.bytes_max of each node: un-uploaded data its WAL may hold before producers get a retriable error."
  type        = number
  default     = 1073741824
}

variable "extra_args" {
  description = "Extra arguments appended to `strata start` on every node."
  type        = list(string)
  default     = []
}

variable "enable_ssm" {
  description = "Attach AmazonSSMManagedInstanceCore to the node role so operators can open a shell with Session Manager."
  type        = bool
  default     = true
}

variable "lambda_artifact_path" {
  description = "Path of the Lambda deployment zip (the strata-lambda crate's `bootstrap` binary, built by deploy/lambda/package.py); null creates no Lambda function."
  type        = string
  default     = null
}

variable "lambda_memory_mb" {
  description = "Memory of the Lambda function, in MB."
  type        = number
  default     = 512
}

variable "lambda_timeout_s" {
  description = "Timeout of one Lambda invocation, in seconds."
  type        = number
  default     = 30
}

variable "lambda_reserved_concurrency" {
  description = "Reserved concurrent executions of the Lambda function (a cap on what it can spend)."
  type        = number
  default     = 50
}

variable "lambda_url_auth_type" {
  description = "Authorization of the Lambda function URL: AWS_IAM (SigV4-signed callers) or NONE (public)."
  type        = string
  default     = "AWS_IAM"

  validation {
    condition     = contains(["AWS_IAM", "NONE"], var.lambda_url_auth_type)
    error_message = "lambda_url_auth_type must be AWS_IAM or NONE."
  }
}

variable "lambda_maintenance_schedule" {
  description = "EventBridge schedule expression that invokes the Lambda function's maintenance round (retention and compaction of the object index); null schedules none."
  type        = string
  default     = "rate(15 minutes)"
}

variable "lambda_retention_ms" {
  description = "Retention (ms) the Lambda maintenance round applies to topics without their own retention.ms; keep it equal to the brokers' tiering.retention_ms (-1: keep forever)."
  type        = number
  default     = 604800000
}

variable "alarm_actions" {
  description = "ARNs (SNS topics) notified when a CloudWatch alarm fires or recovers."
  type        = list(string)
  default     = []
}

variable "log_retention_days" {
  description = "Retention of the CloudWatch log groups (node logs and Lambda), in days."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
