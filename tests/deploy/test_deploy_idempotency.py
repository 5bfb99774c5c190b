"""The idempotency table's deploy snippets and IAM grants agree with the broker's table."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Final

import botocore.session
import yaml
from botocore.validate import ParamValidator

from broker.aws.dynamo import TABLE_DEFINITION
from broker.aws.protocols import DynamoApi
from broker.core.idempotency import KEY_ATTRIBUTE, TTL_ATTRIBUTE

ROOT: Final = Path(__file__).resolve().parents[2]
SNIPPETS: Final = ROOT / "deploy" / "idempotency"
CFN: Final = SNIPPETS / "table.cfn.yaml"
TERRAFORM: Final = SNIPPETS / "table.tf"
IAM_POLICY: Final = ROOT / "deploy" / "iam" / "broker-policy.json"
#: What `broker run` calls on the table (CreateTable/UpdateTimeToLive: create-table only).
RUN_TIME_CALLS: Final = frozenset(
    {"PutItem", "GetItem", "UpdateItem", "DeleteItem", "DescribeTable", "DescribeTimeToLive"}
)


def cfn_table() -> dict[str, Any]:
    template = yaml.safe_load(CFN.read_text())
    (table,) = template["Resources"].values()
    assert table["Type"] == "AWS::DynamoDB::Table"
    properties: dict[str, Any] = table["Properties"]
    return properties


def test_the_cloudformation_table_is_the_one_create_table_makes() -> None:
    properties = cfn_table()
    for name, value in TABLE_DEFINITION.items():
        assert properties[name] == value, name
    assert properties["TimeToLiveSpecification"] == {
        "AttributeName": TTL_ATTRIBUTE,
        "Enabled": True,
    }
    # What CreateTable takes, as DynamoDB's own model says (the name filled in).
    model = botocore.session.get_session().get_service_model("dynamodb")
    shape = model.operation_model("CreateTable").input_shape
    assert shape is not None
    params = {k: v for k, v in properties.items() if k in shape.members}
    params["TableName"] = "broker-idempotency"
    report = ParamValidator().validate(params, shape)
    assert not report.has_errors(), report.generate_report()


def test_the_terraform_table_has_the_key_and_the_ttl() -> None:
    # No HCL parser among the dev dependencies: the blocks the broker needs, by pattern.
    text = TERRAFORM.read_text()
    assert text.count("{") == text.count("}")
    assert re.search(r'resource "aws_dynamodb_table" "\w+" \{', text)
    assert re.search(rf'hash_key\s*=\s*"{KEY_ATTRIBUTE}"', text)
    assert re.search(rf'attribute \{{\s*name\s*=\s*"{KEY_ATTRIBUTE}"\s*type\s*=\s*"S"\s*\}}', text)
    assert re.search(
        rf'ttl \{{\s*attribute_name\s*=\s*"{TTL_ATTRIBUTE}"\s*enabled\s*=\s*true\s*\}}', text
    )
    assert 'billing_mode = "PAY_PER_REQUEST"' in text
    assert "range_key" not in text


def test_the_policy_grants_the_table_calls_on_the_table_only() -> None:
    statements = json.loads(IAM_POLICY.read_text())["Statement"]
    members = {
        "".join(part.title() for part in name.split("_"))
        for name in vars(DynamoApi)
        if not name.startswith("_")
    }
    assert members >= RUN_TIME_CALLS
    default_name = yaml.safe_load(CFN.read_text())["Parameters"]["TableName"]["Default"]
    granted: set[str] = set()
    for statement in statements:
        actions = [a for a in statement["Action"] if a.startswith("dynamodb:")]
        if actions:
            assert statement["Resource"] == [
                f"arn:aws:dynamodb:REGION:ACCOUNT:table/{default_name}"
            ], statement["Sid"]
            granted.update(a.removeprefix("dynamodb:") for a in actions)
    assert granted == members
    run_time = next(s for s in statements if "PutItem" in str(s["Action"]))
    assert {a.removeprefix("dynamodb:") for a in run_time["Action"]} == RUN_TIME_CALLS
