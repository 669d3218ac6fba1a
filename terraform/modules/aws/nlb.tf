# The network load balancer: bootstrap listeners for Kafka and MQTT that reach every node, and
# one listener per broker (broker_port_base + node id) that Kafka clients are sent to by
# Metadata, since a Kafka client must reach each partition's leader itself.

resource "aws_lb" "this" {
  #checkov:skip=CKV2_AWS_20:Kafka and MQTT are TCP protocols; there is no HTTP listener to redirect to HTTPS.
  #checkov:skip=CKV2_AWS_28:A WAF protects HTTP(S) load balancers only; this one forwards TCP.
  name                             = "${var.name}-nlb"
  load_balancer_type               = "network"
  internal                         = var.nlb_internal
  subnets                          = var.subnet_ids
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.nlb_deletion_protection
  tags                             = local.tags

  dynamic "access_logs" {
    for_each = var.nlb_access_logs_bucket == null ? [] : [var.nlb_access_logs_bucket]
    content {
      bucket  = access_logs.value
      prefix  = "${var.name}-nlb"
      enabled = true
    }
  }
}

locals {
  health_check = {
    protocol            = "HTTP"
    port                = tostring(var.admin_port)
    path                = "/health"
    healthy_threshold   = 2
    unhealthy_threshold = 2
    interval            = 10
  }
}

resource "aws_lb_target_group" "kafka" {
  name                 = "${var.name}-kafka"
  port                 = var.kafka_port
  protocol             = "TCP"
  vpc_id               = var.vpc_id
  target_type          = "instance"
  deregistration_delay = 30
  tags                 = local.tags

  health_check {
    protocol            = local.health_check.protocol
    port                = local.health_check.port
    path                = local.health_check.path
    healthy_threshold   = local.health_check.healthy_threshold
    unhealthy_threshold = local.health_check.unhealthy_threshold
    interval            = local.health_check.interval
  }
}

resource "aws_lb_target_group" "mqtt" {
  name                 = "${var.name}-mqtt"
  port                 = var.mqtt_port
  protocol             = "TCP"
  vpc_id               = var.vpc_id
  target_type          = "instance"
  deregistration_delay = 30
  tags                 = local.tags

  health_check {
    protocol            = local.health_check.protocol
    port                = local.health_check.port
    path                = local.health_check.path
    healthy_threshold   = local.health_check.healthy_threshold
    unhealthy_threshold = local.health_check.unhealthy_threshold
    interval            = local.health_check.interval
  }
}

# Node i alone, reached on broker_port_base + i, forwarded to its Kafka port.
resource "aws_lb_target_group" "broker" {
  count = var.node_count

  name                 = "${var.name}-broker-${local.nodes[count.index].node_id}"
  port                 = var.kafka_port
  protocol             = "TCP"
  vpc_id               = var.vpc_id
  target_type          = "instance"
  deregistration_delay = 30
  tags                 = local.tags

  health_check {
    protocol            = local.health_check.protocol
    port                = local.health_check.port
    path                = local.health_check.path
    healthy_threshold   = local.health_check.healthy_threshold
    unhealthy_threshold = local.health_check.unhealthy_threshold
    interval            = local.health_check.interval
  }
}

resource "aws_lb_listener" "kafka" {
  #checkov:skip=CKV_AWS_2:The Kafka wire protocol is not HTTP; TLS is terminated by strata itself when configured.
  #checkov:skip=CKV_AWS_103:TCP pass-through listener; TLS (if any) is end-to-end between the client and strata.
  load_balancer_arn = aws_lb.this.arn
  port              = var.kafka_port
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.kafka.arn
  }
}

resource "aws_lb_listener" "mqtt" {
  #checkov:skip=CKV_AWS_2:MQTT is not HTTP; TLS is terminated by strata itself when configured.
  #checkov:skip=CKV_AWS_103:TCP pass-through listener; TLS (if any) is end-to-end between the client and strata.
  load_balancer_arn = aws_lb.this.arn
  port              = var.mqtt_port
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.mqtt.arn
  }
}

resource "aws_lb_listener" "broker" {
  #checkov:skip=CKV_AWS_2:The Kafka wire protocol is not HTTP; TLS is terminated by strata itself when configured.
  #checkov:skip=CKV_AWS_103:TCP pass-through listener; TLS (if any) is end-to-end between the client and strata.
  count = var.node_count

  load_balancer_arn = aws_lb.this.arn
  port              = var.broker_port_base + local.nodes[count.index].node_id
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.broker[count.index].arn
  }
}
