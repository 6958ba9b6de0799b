"""Whether the head of a `ray up` cluster on AWS may launch its workers: each worker node type's RunInstances call,
made as Ray's AWS provider makes it but with DryRun=True. AWS answers DryRunOperation where the call would have
succeeded and names the refused action and resource otherwise; the autoscaler itself would only retry, and after
half an hour the sweep would blame quota or capacity, never IAM."""

from __future__ import annotations

import re
from pathlib import Path

# where `ray up` leaves the cluster's config, prepared (defaults filled in), on the head
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml").expanduser()
# the tag Ray's AWS provider puts on every instance it launches (ray/autoscaler/tags.py), which the head's policy
# in cluster/README.md requires on RunInstances
CLUSTER_TAG = "ray-cluster-name"
# 'User: arn:... is not authorized to perform: ec2:RunInstances on resource: arn:aws:ec2:...:spot-instances-request/*'
REFUSED = re.compile(r"perform: (\S+) on resource: (\S+)")


def launch_request(config: dict, node_type: str) -> dict:
    """RunInstances' parameters for one worker of `node_type`, as ray/autoscaler/_private/aws/node_provider.py
    builds them (its node_config, the first subnet, one instance, this cluster's tag), as a dry run."""
    request = dict(config["available_node_types"][node_type]["node_config"])
    subnets = request.pop("SubnetIds", None)
    if subnets:
        request["SubnetId"] = subnets[0]
    tags = [{"Key": CLUSTER_TAG, "Value": config["cluster_name"]}]
    return {**request, "MinCount": 1, "MaxCount": 1, "DryRun": True,
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}]}


def launch_problems(config: dict, ec2=None) -> list[str]:
    """A line for each worker node type the head may not launch, naming the refused permission; [] if all may."""
    from botocore.exceptions import ClientError

    if ec2 is None:
        import boto3

        ec2 = boto3.client("ec2", region_name=config["provider"]["region"])
    problems = []
    for node_type in config["available_node_types"]:
        if node_type == config.get("head_node_type"):
            continue
        request = launch_request(config, node_type)
        try:
            ec2.run_instances(**request)
        except ClientError as error:
            code, message = error.response["Error"]["Code"], error.response["Error"].get("Message", "")
            if code != "DryRunOperation":
                problems.append(f"the head may not launch a {node_type} worker ({market(request)} "
                                f"{request.get('InstanceType', '?')}): {refusal(code, message)}")
    return problems


def market(request: dict) -> str:
    return request.get("InstanceMarketOptions", {}).get("MarketType", "on-demand")


def refusal(code: str, message: str) -> str:
    """What to grant, from AWS's answer."""
    if code == "UnauthorizedOperation":
        refused = REFUSED.search(message)
        what = f"{refused[1]} on {refused[2]}" if refused else "ec2:RunInstances on one of its resources"
        return f"{code}: the head's role lacks {what} (the head policy in cluster/README.md, step 6)"
    if "ServiceLinkedRole" in code:
        return (f"{code}: this account has no spot service-linked role and the head may not create it "
                f"(cluster/README.md, step 7: aws iam create-service-linked-role --aws-service-name spot.amazonaws.com)")
    return f"{code}: {message.splitlines()[0] if message else 'refused'}"
