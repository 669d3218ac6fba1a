# StrataMQ on AWS: the history bucket, its KMS key and the IAM roles.
# Compute (one single-instance autoscaling group per node) is in nodes.tf, the NLB in nlb.tf,
# the serverless entry point in lambda.tf and the alarms in alarms.tf.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

data "aws_subnet" "node" {
  count = length(var.subnet_ids)
  id    = var.subnet_ids[count.index]
}

data "aws_vpc" "this" {
  id = var.vpc_id
}

locals {
  account_id  = data.aws_caller_identity.current.account_id
  partition   = data.aws_partition.current.partition
  region      = data.aws_region.current.name
  bucket_name = coalesce(var.bucket_name, "${var.name}-history-${local.account_id}")
  tags        = merge(var.tags, { "strata-cluster" = var.name })

  # Node i (0-based) is strata node id i+1, in subnet i % len(subnets).
  nodes = [for i in range(var.node_count) : {
    index     = i
    node_id   = i + 1
    subnet_id = var.subnet_ids[i % length(var.subnet_ids)]
    az        = data.aws_subnet.node[i % length(var.subnet_ids)].availability_zone
  }]

  object_store_url = "s3://${local.bucket_name}/${var.object_prefix}?region=${local.region}"
}

# --- KMS: one customer-managed key for the bucket, the volumes, the logs and the Lambda environment.

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_111:This is a KMS key policy: its resource "*" is the key itself, and the account-root statement is the AWS default that lets IAM policies grant access.
  #checkov:skip=CKV_AWS_356:This is a KMS key policy: its resource "*" is the key itself, not every resource.
  #checkov:skip=CKV_AWS_109:This is a KMS key policy: its resource "*" is the key itself; key administration stays with the account's IAM policies.
  statement {
    sid       = "AccountAdmin"
    actions   = ["kms:*"]
    resources = ["*"] # In a key policy "*" means this key.
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchLogs"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"] # In a key policy "*" means this key.
    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:/strata/${var.name}/*"]
    }
  }

  statement {
    sid       = "AutoscalingEncryptedVolumes"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey", "kms:CreateGrant"]
    resources = ["*"] # In a key policy "*" means this key.
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling"]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "StrataMQ ${var.name}: history bucket, volumes, logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = local.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/strata-${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

# --- The history bucket.

resource "aws_s3_bucket" "history" {
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles storage cost; the history is re-creatable only from this bucket, so replicate with a separate policy where the business needs it.
  #checkov:skip=CKV2_AWS_62:Nothing consumes bucket events: the metadata index, not S3 notifications, is the truth about objects.
  #checkov:skip=CKV_AWS_18:Server access logs need a second bucket that this module does not own; CloudTrail data events are the recommended audit trail.
  bucket        = local.bucket_name
  force_destroy = var.force_destroy
  tags          = local.tags
}

resource "aws_s3_bucket_public_access_block" "history" {
  bucket                  = aws_s3_bucket.history.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "history" {
  bucket = aws_s3_bucket.history.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "history" {
  bucket = aws_s3_bucket.history.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "history" {
  bucket = aws_s3_bucket.history.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.this.arn
    }
    bucket_key_enabled = true # one KMS call per object instead of per request
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "history" {
  bucket = aws_s3_bucket.history.id

  rule {
    id     = "abort-incomplete-multipart"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_days
    }
  }

  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }
    expiration {
      expired_object_delete_marker = true
    }
  }

  depends_on = [aws_s3_bucket_versioning.history]
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.history.arn,
      "${aws_s3_bucket.history.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "history" {
  bucket     = aws_s3_bucket.history.id
  policy     = data.aws_iam_policy_document.bucket.json
  depends_on = [aws_s3_bucket_public_access_block.history]
}

# --- IAM: least privilege. Nodes and the Lambda function read and write objects under the
# prefix, and nothing else in the bucket.

data "aws_iam_policy_document" "objects" {
  statement {
    sid       = "ListPrefix"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.history.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.object_prefix}/*", var.object_prefix]
    }
  }

  statement {
    sid = "ObjectsUnderPrefix"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${aws_s3_bucket.history.arn}/${var.object_prefix}/*"]
  }

  statement {
    sid       = "BucketKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]
  }
}

resource "aws_iam_policy" "objects" {
  name        = "${var.name}-objects"
  description = "StrataMQ ${var.name}: read and write the history under s3://${local.bucket_name}/${var.object_prefix}/"
  policy      = data.aws_iam_policy_document.objects.json
  tags        = local.tags
}
