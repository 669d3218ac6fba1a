# CloudWatch alarms: a node failing its /health check, fewer healthy nodes than configured (a
# WAL quorum or a raft majority at risk), and Lambda errors and throttles.

resource "aws_cloudwatch_metric_alarm" "unhealthy_nodes" {
  alarm_name          = "${var.name}-unhealthy-nodes"
  alarm_description   = "A StrataMQ node fails GET /health on the admin port."
  namespace           = "AWS/NetworkELB"
  metric_name         = "UnHealthyHostCount"
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 3
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "breaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = local.tags

  dimensions = {
    LoadBalancer = aws_lb.this.arn_suffix
    TargetGroup  = aws_lb_target_group.kafka.arn_suffix
  }
}

resource "aws_cloudwatch_metric_alarm" "healthy_nodes_low" {
  alarm_name          = "${var.name}-healthy-nodes-low"
  alarm_description   = "Fewer healthy StrataMQ nodes than node_count: a second failure may cost the WAL quorum or the raft majority."
  namespace           = "AWS/NetworkELB"
  metric_name         = "HealthyHostCount"
  statistic           = "Minimum"
  period              = 60
  evaluation_periods  = 5
  threshold           = var.node_count
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "breaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = local.tags

  dimensions = {
    LoadBalancer = aws_lb.this.arn_suffix
    TargetGroup  = aws_lb_target_group.kafka.arn_suffix
  }
}

resource "aws_cloudwatch_metric_alarm" "lambda_errors" {
  count = local.lambda_enabled ? 1 : 0

  alarm_name          = "${var.name}-lambda-errors"
  alarm_description   = "The StrataMQ Lambda function returns errors."
  namespace           = "AWS/Lambda"
  metric_name         = "Errors"
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = local.tags

  dimensions = {
    FunctionName = aws_lambda_function.http[0].function_name
  }
}

resource "aws_cloudwatch_metric_alarm" "lambda_throttles" {
  count = local.lambda_enabled ? 1 : 0

  alarm_name          = "${var.name}-lambda-throttles"
  alarm_description   = "The StrataMQ Lambda function hits lambda_reserved_concurrency."
  namespace           = "AWS/Lambda"
  metric_name         = "Throttles"
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = local.tags

  dimensions = {
    FunctionName = aws_lambda_function.http[0].function_name
  }
}
