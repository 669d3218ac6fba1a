# Inputs of the GCP module. Every variable here has a row in README.md (a test checks it).

variable "name" {
  description = "Name of the cluster: prefix of every resource and the value of the strata-cluster label."
  type        = string
  default     = "strata"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.name))
    error_message = "name must be 2-21 characters of lower-case letters, digits and '-', starting with a letter."
  }
}

variable "project_id" {
  description = "GCP project of every resource."
  type        = string
}

variable "region" {
  description = "Region of the nodes, the load balancer and the bucket."
  type        = string
}

variable "zones" {
  description = "Zones of the region; node i is placed in zones[i % length(zones)]."
  type        = list(string)

  validation {
    condition     = length(var.zones) > 0
    error_message = "zones must name at least one zone."
  }
}

variable "network" {
  description = "Self link or name of the VPC network."
  type        = string
}

variable "subnetwork" {
  description = "Self link of the subnetwork the nodes and an internal load balancer use."
  type        = string
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

variable "node_ips" {
  description = "Fixed internal addresses of the nodes, one per node (the meta and WAL peer addresses); empty reserves addresses from the subnetwork."
  type        = list(string)
  default     = []
}

variable "machine_type" {
  description = "Machine type of the nodes; it must accept local SSDs (n2, n2d, c2, c3-*-lssd ...)."
  type        = string
  default     = "n2-standard-4"
}

variable "local_ssd_count" {
  description = "Local NVMe SSDs (375 GB each) per node, for the WAL and the read cache; the first one is used."
  type        = number
  default     = 1
}

variable "image" {
  description = "Boot image of the nodes: Container-Optimized OS runs the strata container."
  type        = string
  default     = "cos-cloud/cos-stable"
}

variable "strata_image" {
  description = "Container image of strata (built from deploy/docker/Dockerfile, pushed to Artifact Registry)."
  type        = string
}

variable "bucket_name" {
  description = "Name of the GCS bucket created for the history; null derives one from name and project_id."
  type        = string
  default     = null
}

variable "bucket_location" {
  description = "Location of the bucket; null uses region."
  type        = string
  default     = null
}

variable "object_prefix" {
  description = "Key prefix of every object strata writes in the bucket."
  type        = string
  default     = "strata"
}

variable "kms_key_name" {
  description = "Cloud KMS key (projects/.../cryptoKeys/...) for the bucket (CMEK); null uses Google-managed encryption."
  type        = string
  default     = null
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

variable "access_log_bucket" {
  description = "Existing bucket that receives the history bucket's usage logs; null turns them off."
  type        = string
  default     = null
}

variable "kafka_port" {
  description = "Kafka listener port on the nodes and the load balancer."
  type        = number
  default     = 9092
}

variable "mqtt_port" {
  description = "MQTT listener port on the nodes and the load balancer."
  type        = number
  default     = 1883
}

variable "admin_port" {
  description = "Admin HTTP port (/health, /metrics, REST): health checks; reachable from allowed_admin_cidrs."
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

variable "load_balancer_scheme" {
  description = "INTERNAL (a regional internal passthrough load balancer) or EXTERNAL (a regional external passthrough load balancer with a public address)."
  type        = string
  default     = "INTERNAL"

  validation {
    condition     = contains(["INTERNAL", "EXTERNAL"], var.load_balancer_scheme)
    error_message = "load_balancer_scheme must be INTERNAL or EXTERNAL."
  }
}

variable "advertised_hosts" {
  description = "Host each node advertises to Kafka clients, one per node; empty advertises the node's internal address (clients in the VPC or a peered network)."
  type        = list(string)
  default     = []
}

variable "allowed_client_cidrs" {
  description = "CIDR blocks allowed to reach the Kafka and MQTT ports."
  type        = list(string)
}

variable "allowed_admin_cidrs" {
  description = "CIDR blocks allowed to reach the admin HTTP port (operators, Prometheus)."
  type        = list(string)
  default     = []
}

variable "boot_disk_size_gb" {
  description = "Size of each node's boot disk, in GB."
  type        = number
  default     = 20
}

variable "meta_disk_size_gb" {
  description = "Size of each node's persistent disk for the metadata raft log (kept when the instance is recreated), in GB."
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

variable "labels" {
  description = "Labels added to every resource that takes them."
  type        = map(string)
  default     = {}
}
