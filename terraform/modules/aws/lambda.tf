# The serverless entry point: produce/fetch over HTTP on the `direct` storage mode (acknowledged
# once the object is in S3), behind a function URL. The deployment zip (a `bootstrap` binary of
# the strata-lambda crate for the provided.al2023 runtime) is built by deploy/lambda/package.py
# (docs/lambda.md); until lambda_artifact_path is set, no function is created.

locals {
  lambda_enabled = var.lambda_artifact_path != null
}

resource "aws_cloudwatch_log_group" "lambda" {
  count = local.lambda_enabled ? 1 : 0

  name              = "/aws/lambda/${var.name}-http"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "lambda" {
  count = local.lambda_enabled ? 1 : 0

  name               = "${var.name}-lambda"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "lambda_objects" {
  count = local.lambda_enabled ? 1 : 0

  role       = aws_iam_role.lambda[0].name
  policy_arn = aws_iam_policy.objects.arn
}

# ENIs in the VPC and X-Ray: the AWS managed policies scoped to exactly that.
resource "aws_iam_role_policy_attachment" "lambda_vpc" {
  count = local.lambda_enabled ? 1 : 0

  role       = aws_iam_role.lambda[0].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
}

resource "aws_iam_role_policy_attachment" "lambda_xray" {
  count = local.lambda_enabled ? 1 : 0

  role       = aws_iam_role.lambda[0].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AWSXRayDaemonWriteAccess"
}

data "aws_iam_policy_document" "lambda_logs" {
  count = local.lambda_enabled ? 1 : 0

  statement {
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.lambda[0].arn}:*"]
  }

  statement {
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.this.arn]
  }
}

resource "aws_iam_role_policy" "lambda_logs" {
  count = local.lambda_enabled ? 1 : 0

  name   = "${var.name}-lambda-logs"
  role   = aws_iam_role.lambda[0].id
  policy = data.aws_iam_policy_document.lambda_logs[0].json
}

resource "aws_security_group" "lambda" {
  count = local.lambda_enabled ? 1 : 0

  name        = "${var.name}-lambda"
  description = "StrataMQ ${var.name} Lambda function (egress only)"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_egress_rule" "lambda_https" {
  for_each = local.lambda_enabled ? toset(var.egress_cidrs) : toset([])

  security_group_id = aws_security_group.lambda[0].id
  description       = "HTTPS: S3 and the metadata API"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "lambda_meta" {
  count = local.lambda_enabled ? 1 : 0

  security_group_id            = aws_security_group.lambda[0].id
  description                  = "Meta gRPC of the nodes"
  referenced_security_group_id = aws_security_group.node.id
  ip_protocol                  = "tcp"
  from_port                    = var.meta_port
  to_port                      = var.meta_port
}

resource "aws_vpc_security_group_ingress_rule" "meta_from_lambda" {
  count = local.lambda_enabled ? 1 : 0

  security_group_id            = aws_security_group.node.id
  description                  = "Meta gRPC from the Lambda function"
  referenced_security_group_id = aws_security_group.lambda[0].id
  ip_protocol                  = "tcp"
  from_port                    = var.meta_port
  to_port                      = var.meta_port
}

resource "aws_lambda_function" "http" {
  #checkov:skip=CKV_AWS_116:Invoked synchronously through its function URL; a dead-letter queue only applies to asynchronous invocations.
  #checkov:skip=CKV_AWS_272:The artifact is built by the project's own pipeline; enable code signing with a signing profile where your organisation requires it.
  count = local.lambda_enabled ? 1 : 0

  function_name                  = "${var.name}-http"
  description                    = "StrataMQ ${var.name}: produce/fetch over HTTP (direct mode)"
  role                           = aws_iam_role.lambda[0].arn
  filename                       = var.lambda_artifact_path
  source_code_hash               = filebase64sha256(var.lambda_artifact_path)
  runtime                        = "provided.al2023"
  handler                        = "bootstrap"
  architectures                  = [var.architecture]
  memory_size                    = var.lambda_memory_mb
  timeout                        = var.lambda_timeout_s
  reserved_concurrent_executions = var.lambda_reserved_concurrency
  kms_key_arn                    = aws_kms_key.this.arn

  environment {
    variables = {
      STRATA_OBJECT_STORE         = local.object_store_url
      STRATA_META_PEERS           = local.meta_peers
      STRATA_LOG_FORMAT           = "json"
      STRATA_TIERING_RETENTION_MS = tostring(var.lambda_retention_ms)
    }
  }

  vpc_config {
    subnet_ids         = var.subnet_ids
    security_group_ids = [aws_security_group.lambda[0].id]
  }

  tracing_config {
    mode = "Active"
  }

  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.lambda[0].name
  }

  tags = local.tags

  depends_on = [aws_iam_role_policy.lambda_logs]
}

resource "aws_lambda_function_url" "http" {
  count = local.lambda_enabled ? 1 : 0

  function_name      = aws_lambda_function.http[0].function_name
  authorization_type = var.lambda_url_auth_type
}

# The maintenance round (retention and compaction of the object index, docs/lambda.md): an
# EventBridge schedule invokes the same function with a "Scheduled Event".
resource "aws_cloudwatch_event_rule" "maintenance" {
  count = local.lambda_enabled && var.lambda_maintenance_schedule != null ? 1 : 0

  name                = "${var.name}-maintenance"
  description         = "StrataMQ ${var.name}: retention and compaction round"
  schedule_expression = var.lambda_maintenance_schedule
  tags                = local.tags
}

resource "aws_cloudwatch_event_target" "maintenance" {
  count = local.lambda_enabled && var.lambda_maintenance_schedule != null ? 1 : 0

  rule = aws_cloudwatch_event_rule.maintenance[0].name
  arn  = aws_lambda_function.http[0].arn
}

resource "aws_lambda_permission" "maintenance" {
  count = local.lambda_enabled && var.lambda_maintenance_schedule != null ? 1 : 0

  statement_id  = "AllowEventBridgeMaintenance"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.http[0].function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.maintenance[0].arn
}
