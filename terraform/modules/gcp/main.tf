# StrataMQ on GCP: the history bucket, the nodes' service account, and the nodes — one
# single-instance managed instance group per node with a fixed internal address, a stateful
# persistent disk for the metadata raft log and a local SSD for the WAL and the read cache.
# The load balancer is in lb.tf.

locals {
  bucket_name = coalesce(var.bucket_name, "${var.name}-history-${var.project_id}")
  labels      = merge(var.labels, { "strata-cluster" = var.name })
  tag         = "${var.name}-node"

  nodes = [for i in range(var.node_count) : {
    index   = i
    node_id = i + 1
    zone    = var.zones[i % length(var.zones)]
  }]

  node_ips   = [for n in local.nodes : google_compute_address.node[n.index].address]
  meta_peers = join(",", [for n in local.nodes : "${n.node_id}@${local.node_ips[n.index]}:${var.meta_port}"])
  wal_peers  = join(",", [for n in local.nodes : "${local.node_ips[n.index]}:${var.wal_port}"])

  object_store_url = "gcs://${local.bucket_name}/${var.object_prefix}"
}

# --- The history bucket.

resource "google_storage_bucket" "history" {
  #checkov:skip=CKV_GCP_62:Usage logs need a second bucket this module does not own; set access_log_bucket to turn them on.
  project                     = var.project_id
  name                        = local.bucket_name
  location                    = coalesce(var.bucket_location, var.region)
  force_destroy               = var.force_destroy
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = local.labels

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_expiration_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  # Parts of an unfinished upload (a crash mid-upload) are removed after a day.
  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }

  dynamic "logging" {
    for_each = var.access_log_bucket == null ? [] : [var.access_log_bucket]
    content {
      log_bucket = logging.value
    }
  }
}

# --- Service account: objects in this bucket, logs and metrics, nothing else.

resource "google_service_account" "node" {
  project      = var.project_id
  account_id   = "${var.name}-node"
  display_name = "StrataMQ ${var.name} nodes"
}

resource "google_storage_bucket_iam_member" "node_objects" {
  bucket = google_storage_bucket.history.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.node.email}"
}

resource "google_project_iam_member" "node_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = "serviceAccount:${google_service_account.node.email}"
}

resource "google_project_iam_member" "node_metrics" {
  project = var.project_id
  role    = "roles/monitoring.metricWriter"
  member  = "serviceAccount:${google_service_account.node.email}"
}

resource "google_project_iam_member" "node_registry" {
  project = var.project_id
  role    = "roles/artifactregistry.reader"
  member  = "serviceAccount:${google_service_account.node.email}"
}

# --- Nodes.

resource "google_compute_address" "node" {
  count = var.node_count

  project      = var.project_id
  region       = var.region
  name         = "${var.name}-node-${local.nodes[count.index].node_id}"
  address_type = "INTERNAL"
  subnetwork   = var.subnetwork
  address      = length(var.node_ips) > 0 ? var.node_ips[count.index] : null
  labels       = local.labels
}

resource "google_compute_instance_template" "node" {
  #checkov:skip=CKV_GCP_38:The boot disk holds only the OS image; data at rest (bucket, meta disk) is encrypted by Google or by kms_key_name. Customer-supplied keys cannot be used by instances a MIG recreates unattended.
  count = var.node_count

  project      = var.project_id
  name_prefix  = "${var.name}-node-${local.nodes[count.index].node_id}-"
  machine_type = var.machine_type
  region       = var.region
  tags         = [local.tag]
  labels       = local.labels

  disk {
    source_image = var.image
    boot         = true
    auto_delete  = true
    disk_size_gb = var.boot_disk_size_gb
    disk_type    = "pd-balanced"
  }

  # The metadata raft log: kept by the group's stateful policy when the instance is recreated.
  disk {
    device_name  = "strata-meta"
    boot         = false
    auto_delete  = false
    disk_size_gb = var.meta_disk_size_gb
    disk_type    = "pd-ssd"
    labels       = local.labels
  }

  dynamic "disk" {
    for_each = range(var.local_ssd_count)
    content {
      device_name  = "local-ssd-${disk.value}"
      type         = "SCRATCH"
      disk_type    = "local-ssd"
      interface    = "NVME"
      disk_size_gb = 375
    }
  }

  network_interface {
    subnetwork = var.subnetwork
    network_ip = local.node_ips[count.index]
  }

  service_account {
    email  = google_service_account.node.email
    scopes = ["cloud-platform"]
  }

  shielded_instance_config {
    enable_secure_boot          = true
    enable_vtpm                 = true
    enable_integrity_monitoring = true
  }

  metadata = {
    block-project-ssh-keys = "true"
    enable-oslogin         = "TRUE"
    serial-port-enable     = "false"
    google-logging-enabled = "true"
    startup-script = templatefile("${path.module}/startup.sh.tftpl", {
      node_id          = local.nodes[count.index].node_id
      node_ip          = local.node_ips[count.index]
      image            = var.strata_image
      object_store_url = local.object_store_url
      advertise        = "${length(var.advertised_hosts) > 0 ? var.advertised_hosts[count.index] : local.node_ips[count.index]}:${var.kafka_port}"
      kafka_port       = var.kafka_port
      mqtt_port        = var.mqtt_port
      admin_port       = var.admin_port
      meta_port        = var.meta_port
      wal_port         = var.wal_port
      meta_peers       = local.meta_peers
      wal_peers        = local.wal_peers
      wal_bytes_max    = var.wal_bytes_max
      extra_args       = join(" ", [for a in var.extra_args : format("'%s'", replace(a, "'", "'\\''"))])
    })
  }

  scheduling {
    # Local SSDs cannot live-migrate with every machine type; a maintenance event restarts the
    # node, whose WAL replica then catches up from the quorum.
    on_host_maintenance = "TERMINATE"
    automatic_restart   = true
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "google_compute_health_check" "node" {
  project             = var.project_id
  name                = "${var.name}-health"
  check_interval_sec  = 10
  timeout_sec         = 5
  healthy_threshold   = 2
  unhealthy_threshold = 3

  http_health_check {
    port         = var.admin_port
    request_path = "/health"
  }
}

resource "google_compute_instance_group_manager" "node" {
  count = var.node_count

  project            = var.project_id
  name               = "${var.name}-node-${local.nodes[count.index].node_id}"
  zone               = local.nodes[count.index].zone
  base_instance_name = "${var.name}-node-${local.nodes[count.index].node_id}"
  target_size        = 1

  version {
    instance_template = google_compute_instance_template.node[count.index].self_link
  }

  stateful_disk {
    device_name = "strata-meta"
    delete_rule = "NEVER"
  }

  auto_healing_policies {
    health_check      = google_compute_health_check.node.id
    initial_delay_sec = 300
  }

  update_policy {
    type                  = "OPPORTUNISTIC"
    minimal_action        = "REPLACE"
    max_unavailable_fixed = 1
    max_surge_fixed       = 0 # a fixed address can be held by one instance only
    replacement_method    = "RECREATE"
  }
}

# --- Firewall.

data "google_netblock_ip_ranges" "health_checkers" {
  range_type = "health-checkers"
}

resource "google_compute_firewall" "clients" {
  project       = var.project_id
  name          = "${var.name}-clients"
  network       = var.network
  direction     = "INGRESS"
  source_ranges = var.allowed_client_cidrs
  target_tags   = [local.tag]

  allow {
    protocol = "tcp"
    ports    = [tostring(var.kafka_port), tostring(var.mqtt_port)]
  }
}

resource "google_compute_firewall" "health" {
  project       = var.project_id
  name          = "${var.name}-health"
  network       = var.network
  direction     = "INGRESS"
  source_ranges = data.google_netblock_ip_ranges.health_checkers.cidr_blocks_ipv4
  target_tags   = [local.tag]

  allow {
    protocol = "tcp"
    ports    = [tostring(var.admin_port), tostring(var.kafka_port), tostring(var.mqtt_port)]
  }
}

resource "google_compute_firewall" "admin" {
  count = length(var.allowed_admin_cidrs) > 0 ? 1 : 0

  project       = var.project_id
  name          = "${var.name}-admin"
  network       = var.network
  direction     = "INGRESS"
  source_ranges = var.allowed_admin_cidrs
  target_tags   = [local.tag]

  allow {
    protocol = "tcp"
    ports    = [tostring(var.admin_port)]
  }
}

resource "google_compute_firewall" "peers" {
  project     = var.project_id
  name        = "${var.name}-peers"
  network     = var.network
  direction   = "INGRESS"
  source_tags = [local.tag]
  target_tags = [local.tag]

  allow {
    protocol = "tcp"
    ports    = [tostring(var.meta_port), tostring(var.wal_port), tostring(var.admin_port), tostring(var.kafka_port)]
  }
}
