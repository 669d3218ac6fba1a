# A 3-node StrataMQ cluster on GCP: a new VPC and subnetwork (with Cloud NAT for pulling the
# image), three nodes in three zones with a local SSD each, the history in a new GCS bucket,
# Kafka and MQTT behind an internal passthrough load balancer.

variable "project_id" {
  description = "GCP project."
  type        = string
}

variable "region" {
  description = "GCP region."
  type        = string
  default     = "europe-west1"
}

variable "strata_image" {
  description = "strata container image in Artifact Registry, e.g. europe-west1-docker.pkg.dev/PROJECT/strata/strata:0.1.0."
  type        = string
}

variable "client_cidrs" {
  description = "Networks of the Kafka and MQTT clients."
  type        = list(string)
  default     = ["10.0.0.0/8"]
}

resource "google_compute_network" "this" {
  name                    = "strata"
  auto_create_subnetworks = false
}

resource "google_compute_subnetwork" "this" {
  #checkov:skip=CKV_GCP_76:Private IPv6 Google access is not needed: the nodes reach GCS over IPv4 private Google access.
  name                     = "strata"
  region                   = var.region
  network                  = google_compute_network.this.id
  ip_cidr_range            = "10.20.0.0/24"
  private_ip_google_access = true

  log_config {
    aggregation_interval = "INTERVAL_5_SEC"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_router" "this" {
  name    = "strata"
  region  = var.region
  network = google_compute_network.this.id
}

resource "google_compute_router_nat" "this" {
  name                               = "strata"
  router                             = google_compute_router.this.name
  region                             = var.region
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "ALL_SUBNETWORKS_ALL_IP_RANGES"
}

module "strata" {
  source = "../../modules/gcp"

  name                 = "strata-prod"
  project_id           = var.project_id
  region               = var.region
  zones                = ["${var.region}-b", "${var.region}-c", "${var.region}-d"]
  network              = google_compute_network.this.id
  subnetwork           = google_compute_subnetwork.this.id
  node_count           = 3
  node_ips             = ["10.20.0.11", "10.20.0.12", "10.20.0.13"]
  strata_image         = var.strata_image
  allowed_client_cidrs = var.client_cidrs
  allowed_admin_cidrs  = var.client_cidrs

  labels = {
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
