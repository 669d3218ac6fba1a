# A regional passthrough network load balancer for Kafka bootstrap and MQTT: internal (the
# default) or external. Passthrough keeps client addresses and needs no proxy; Kafka clients
# then connect to each node's advertised address for the partitions it leads.

resource "google_compute_address" "lb" {
  project      = var.project_id
  region       = var.region
  name         = "${var.name}-lb"
  address_type = var.load_balancer_scheme
  subnetwork   = var.load_balancer_scheme == "INTERNAL" ? var.subnetwork : null
  labels       = local.labels
}

resource "google_compute_region_health_check" "lb" {
  project             = var.project_id
  region              = var.region
  name                = "${var.name}-lb-health"
  check_interval_sec  = 10
  timeout_sec         = 5
  healthy_threshold   = 2
  unhealthy_threshold = 2

  http_health_check {
    port         = var.admin_port
    request_path = "/health"
  }
}

resource "google_compute_region_backend_service" "this" {
  project               = var.project_id
  region                = var.region
  name                  = "${var.name}-backend"
  protocol              = "TCP"
  load_balancing_scheme = var.load_balancer_scheme == "INTERNAL" ? "INTERNAL" : "EXTERNAL"
  health_checks         = [google_compute_region_health_check.lb.id]

  dynamic "backend" {
    for_each = google_compute_instance_group_manager.node
    content {
      group          = backend.value.instance_group
      balancing_mode = "CONNECTION"
    }
  }
}

resource "google_compute_forwarding_rule" "this" {
  project               = var.project_id
  region                = var.region
  name                  = "${var.name}-lb"
  ip_address            = google_compute_address.lb.address
  ip_protocol           = "TCP"
  ports                 = [tostring(var.kafka_port), tostring(var.mqtt_port)]
  load_balancing_scheme = var.load_balancer_scheme == "INTERNAL" ? "INTERNAL" : "EXTERNAL"
  backend_service       = google_compute_region_backend_service.this.id
  network               = var.load_balancer_scheme == "INTERNAL" ? var.network : null
  subnetwork            = var.load_balancer_scheme == "INTERNAL" ? var.subnetwork : null
  labels                = local.labels
}
