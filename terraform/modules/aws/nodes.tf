# The nodes: one single-instance autoscaling group per node, so a failed machine is replaced
# with the same node id. Identity that must survive a replacement lives outside the instance:
# a fixed secondary network interface (the address in --meta-peers / --wal-peers) and a
# persistent EBS volume for the metadata raft log. The WAL and the read cache live on the
# instance's local NVMe: a replaced node's WAL replica catches up from the quorum.

data "aws_ssm_parameter" "al2023" {
  count = var.ami_id == null ? 1 : 0
  name  = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-${var.architecture}"
}

locals {
  ami_id     = var.ami_id != null ? var.ami_id : nonsensitive(data.aws_ssm_parameter.al2023[0].value)
  peer_ips   = [for n in local.nodes : aws_network_interface.node[n.index].private_ip]
  meta_peers = join(",", [for n in local.nodes : "${n.node_id}@${local.peer_ips[n.index]}:${var.meta_port}"])
  wal_peers  = join(",", [for n in local.nodes : "${local.peer_ips[n.index]}:${var.wal_port}"])
}

resource "aws_cloudwatch_log_group" "nodes" {
  name              = "/strata/${var.name}/nodes"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

# --- IAM role of the nodes.

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "node" {
  name               = "${var.name}-node"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "node" {
  # A booting node attaches its own network interface and metadata volume: only resources of
  # this cluster (tag condition), only to instances of this cluster.
  statement {
    sid     = "AttachOwnIdentity"
    actions = ["ec2:AttachNetworkInterface", "ec2:AttachVolume"]
    resources = concat(
      [for eni in aws_network_interface.node : "arn:${local.partition}:ec2:${local.region}:${local.account_id}:network-interface/${eni.id}"],
      [for v in aws_ebs_volume.meta : v.arn],
      ["arn:${local.partition}:ec2:${local.region}:${local.account_id}:instance/*"],
    )
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/strata-cluster"
      values   = [var.name]
    }
  }

  statement {
    sid = "DescribeForBoot"
    # Describe* calls support no resource-level permissions.
    actions   = ["ec2:DescribeNetworkInterfaces", "ec2:DescribeVolumes"]
    resources = ["*"]
  }

  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["${aws_cloudwatch_log_group.nodes.arn}:*"]
  }
}

resource "aws_iam_role_policy" "node" {
  name   = "${var.name}-node-boot"
  role   = aws_iam_role.node.id
  policy = data.aws_iam_policy_document.node.json
}

resource "aws_iam_role_policy_attachment" "node_objects" {
  role       = aws_iam_role.node.name
  policy_arn = aws_iam_policy.objects.arn
}

resource "aws_iam_role_policy_attachment" "node_ecr" {
  role       = aws_iam_role.node.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly"
}

resource "aws_iam_role_policy_attachment" "node_ssm" {
  count      = var.enable_ssm ? 1 : 0
  role       = aws_iam_role.node.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "node" {
  name = "${var.name}-node"
  role = aws_iam_role.node.name
  tags = local.tags
}

# --- Network.

resource "aws_security_group" "node" {
  name        = "${var.name}-node"
  description = "StrataMQ ${var.name} nodes"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "clients" {
  for_each = { for pair in setproduct(var.allowed_client_cidrs, [var.kafka_port, var.mqtt_port]) : "${pair[0]}-${pair[1]}" => pair }

  security_group_id = aws_security_group.node.id
  description       = "Kafka/MQTT clients (through the NLB, which keeps their addresses)"
  cidr_ipv4         = each.value[0]
  ip_protocol       = "tcp"
  from_port         = each.value[1]
  to_port           = each.value[1]
}

resource "aws_vpc_security_group_ingress_rule" "nlb_health" {
  security_group_id = aws_security_group.node.id
  description       = "NLB health checks on /health"
  cidr_ipv4         = data.aws_vpc.this.cidr_block
  ip_protocol       = "tcp"
  from_port         = var.admin_port
  to_port           = var.admin_port
}

resource "aws_vpc_security_group_ingress_rule" "admin" {
  for_each = toset(var.allowed_admin_cidrs)

  security_group_id = aws_security_group.node.id
  description       = "Admin HTTP (operators, Prometheus)"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = var.admin_port
  to_port           = var.admin_port
}

resource "aws_vpc_security_group_ingress_rule" "peers" {
  for_each = toset([tostring(var.meta_port), tostring(var.wal_port), tostring(var.admin_port), tostring(var.kafka_port)])

  security_group_id            = aws_security_group.node.id
  description                  = "Between nodes: meta raft, WAL replication, admin, Kafka"
  referenced_security_group_id = aws_security_group.node.id
  ip_protocol                  = "tcp"
  from_port                    = tonumber(each.value)
  to_port                      = tonumber(each.value)
}

resource "aws_vpc_security_group_egress_rule" "peers" {
  security_group_id            = aws_security_group.node.id
  description                  = "Between nodes"
  referenced_security_group_id = aws_security_group.node.id
  ip_protocol                  = "tcp"
  from_port                    = 0
  to_port                      = 65535
}

resource "aws_vpc_security_group_egress_rule" "https" {
  for_each = toset(var.egress_cidrs)

  security_group_id = aws_security_group.node.id
  description       = "HTTPS: S3, ECR, CloudWatch Logs, EC2 API (boot-time attach)"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

# The stable address of node i: a secondary interface it attaches at boot.
resource "aws_network_interface" "node" {
  count = var.node_count

  subnet_id       = local.nodes[count.index].subnet_id
  security_groups = [aws_security_group.node.id]
  description     = "StrataMQ ${var.name} node ${local.nodes[count.index].node_id} (peer address)"
  tags            = merge(local.tags, { Name = "${var.name}-node-${local.nodes[count.index].node_id}" })
}

# The metadata raft log of node i: survives the instance.
resource "aws_ebs_volume" "meta" {
  count = var.node_count

  availability_zone = local.nodes[count.index].az
  size              = var.meta_volume_size_gb
  type              = "gp3"
  encrypted         = true
  kms_key_id        = aws_kms_key.this.arn
  tags              = merge(local.tags, { Name = "${var.name}-meta-${local.nodes[count.index].node_id}" })
}

resource "aws_launch_template" "node" {
  count = var.node_count

  name_prefix            = "${var.name}-node-${local.nodes[count.index].node_id}-"
  image_id               = local.ami_id
  instance_type          = var.instance_type
  update_default_version = true
  ebs_optimized          = true

  iam_instance_profile {
    arn = aws_iam_instance_profile.node.arn
  }

  network_interfaces {
    device_index                = 0
    associate_public_ip_address = false
    security_groups             = [aws_security_group.node.id]
    delete_on_termination       = true
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1 # the container runs with host networking: one hop
  }

  monitoring {
    enabled = true
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = var.root_volume_size_gb
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = aws_kms_key.this.arn
      delete_on_termination = true
    }
  }

  user_data = base64encode(templatefile("${path.module}/user_data.sh.tftpl", {
    region           = local.region
    node_id          = local.nodes[count.index].node_id
    eni_id           = aws_network_interface.node[count.index].id
    peer_ip          = local.peer_ips[count.index]
    meta_volume_id   = aws_ebs_volume.meta[count.index].id
    image            = var.strata_image
    log_group        = aws_cloudwatch_log_group.nodes.name
    object_store_url = local.object_store_url
    advertise        = "${aws_lb.this.dns_name}:${var.broker_port_base + local.nodes[count.index].node_id}"
    kafka_port       = var.kafka_port
    mqtt_port        = var.mqtt_port
    admin_port       = var.admin_port
    meta_port        = var.meta_port
    wal_port         = var.wal_port
    meta_peers       = local.meta_peers
    wal_peers        = local.wal_peers
    wal_bytes_max    = var.wal_bytes_max
    extra_args       = join(" ", [for a in var.extra_args : format("'%s'", replace(a, "'", "'\\''"))])
  }))

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.name}-node-${local.nodes[count.index].node_id}" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = local.tags
  }

  tags = local.tags
}

resource "aws_autoscaling_group" "node" {
  count = var.node_count

  name                      = "${var.name}-node-${local.nodes[count.index].node_id}"
  min_size                  = 1
  max_size                  = 1
  desired_capacity          = 1
  vpc_zone_identifier       = [local.nodes[count.index].subnet_id]
  health_check_type         = "ELB"
  health_check_grace_period = 300
  target_group_arns = [
    aws_lb_target_group.kafka.arn,
    aws_lb_target_group.mqtt.arn,
    aws_lb_target_group.broker[count.index].arn,
  ]

  launch_template {
    id      = aws_launch_template.node[count.index].id
    version = aws_launch_template.node[count.index].latest_version
  }

  dynamic "tag" {
    for_each = merge(local.tags, { Name = "${var.name}-node-${local.nodes[count.index].node_id}" })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }
}
