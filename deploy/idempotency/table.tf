# The idempotency table of idempotent=True handlers (docs/fleet.md), for Terraform.
# The same table `broker idempotency create-table NAME` creates: one string partition key
# `id` (the SHA-256 of a task token), on-demand billing, TTL on `expires_at`. Point the
# broker at it with BROKER_IDEMPOTENCY_TABLE (its name, or the ARN output).

variable "idempotency_table_name" {
  type    = string
  default = "broker-idempotency"
}

resource "aws_dynamodb_table" "broker_idempotency" {
  name         = var.idempotency_table_name
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "id"

  attribute {
    name = "id"
    type = "S"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }
}

output "broker_idempotency_table_arn" {
  value = aws_dynamodb_table.broker_idempotency.arn
}
