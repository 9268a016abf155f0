"""The deploy tool's YAML (``deploy.yaml``): what an operator chooses, section by section.

Region, subnets, model, instance types, sizes, where Terraform is and how
``up`` waits; :mod:`.tfvars` turns it into Terraform's variables. Loaded by
the same typed loader as every other component's settings
(:func:`spotrelay.core.config.load`), so each key has an environment
variable and ``spotrelay up --help`` lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spotrelay.core.config import setting

# 24 GiB GPUs and up: they hold a 7-8B 16-bit model; g4dn's 16 GiB T4 does not.
DEFAULT_INSTANCE_TYPES = [
    "g6.xlarge",
    "g5.xlarge",
    "g6e.xlarge",
    "g6.2xlarge",
    "g5.2xlarge",
    "g6e.2xlarge",
]


@dataclass
class TerraformSection:
    binary: str | None = setting(
        None, help="terraform or tofu executable (path or name); default: terraform, then tofu"
    )
    dir: str | None = setting(
        None, help="Terraform configuration to apply; default: terraform/examples/complete"
    )
    backend_config: list[str] = setting(
        default_factory=list,
        help="terraform init -backend-config values: a file (backend.hcl) or key=value; "
        "the bundled example keeps its state in S3 and needs the bucket here",
    )


@dataclass
class DeploymentSection:
    name: str = setting("spotrelay", help="name prefix of every resource")
    region: str | None = setting(None, help="AWS region, e.g. us-east-1")
    vpc_id: str | None = setting(None, help="existing VPC")
    private_subnet_ids: list[str] = setting(
        default_factory=list, help="private subnets (>= 2 AZs) for routers and GPU nodes"
    )
    public_subnet_ids: list[str] = setting(
        default_factory=list, help="public subnets (>= 2 AZs) for an internet-facing ALB"
    )
    alb_internal: bool = setting(
        True, help="internal ALB (private subnets); false needs certificate_arn and API keys"
    )
    allowed_cidrs: list[str] = setting(
        default_factory=list, help="client networks allowed to reach the load balancer"
    )
    certificate_arn: str | None = setting(None, help="ACM certificate: HTTPS on the ALB")
    api_keys_parameter: str | None = setting(
        None, help="SSM SecureString with the data-plane API keys, comma-separated"
    )


@dataclass
class ModelSection:
    name: str | None = setting(None, help="Hugging Face id or path of the model vLLM serves")
    served_name: str | None = setting(None, help="name clients send; default: model.name")
    max_model_len: int | None = setting(None, min=256, help="vLLM --max-model-len")
    gpu_memory_utilization: float = setting(0.9, min=0.05, max=1.0, help="vLLM memory share")
    tensor_parallel_size: int = setting(1, choices=(1, 2, 4, 8), help="GPUs per vLLM server")
    extra_args: list[str] = setting(default_factory=list, help="extra `vllm serve` tokens")
    hf_token_parameter: str | None = setting(
        None, help="SSM parameter with a Hugging Face token (gated models)"
    )
    params_billion: float | None = setting(
        None, min=0.001, help="parameters in billions: every instance type is checked to hold it"
    )
    gpu_memory_gib: float | None = setting(
        None, min=0.1, help="GPU memory the model needs (GiB), when known; overrides the estimate"
    )
    s3_uri: str | None = setting(
        None, help="load the weights from this S3 prefix (s3://bucket/path/) instead of the hub"
    )
    s3_load: str = setting(
        "copy", choices=("copy", "stream"), help="copy to local NVMe at boot, or stream (runai)"
    )


@dataclass
class PoolSection:
    instance_types: list[str] = setting(
        default_factory=lambda: list(DEFAULT_INSTANCE_TYPES),
        help="GPU instance types, most preferred first",
    )
    min_size: int = setting(0, min=0, help="fewest GPU nodes")
    desired_capacity: int = setting(1, min=0, help="GPU nodes to run")
    max_size: int | None = setting(None, min=0, help="most GPU nodes; default desired + 1")
    on_demand_base_capacity: int = setting(0, min=0, help="nodes always bought on demand")
    on_demand_percentage_above_base_capacity: int = setting(
        0, min=0, max=100, help="on-demand share above the base, in percent"
    )
    ami_id: str | None = setting(None, help="GPU AMI with vLLM baked in (terraform/.../bake)")


@dataclass
class SoftwareSection:
    vllm_version: str = setting("0.33.0", help="pinned vLLM version on the GPU nodes")
    spotrelay_pip_spec: str | None = setting(
        None,
        help="instead of the wheel up builds from the checkout: a pip requirement (spotrelay==X) "
        "or wheel URL, installed only if its file matches spotrelay_sha256",
    )
    spotrelay_sha256: str | None = setting(
        None, help="sha256 of the file spotrelay_pip_spec downloads (required with it)"
    )


@dataclass
class RouterSection:
    instance_type: str = setting("c7i.large", help="on-demand instance type of the routers")
    count: int = setting(2, min=1, max=8, help="number of routers")


@dataclass
class StatusSection:
    router_url: str | None = setting(None, help="router to ask; default: terraform output")
    node_token: str | None = setting(None, secret=True, help="node token for GET /nodes")
    node_token_file: str | None = setting(None, help="file with the node token")
    asg_name: str | None = setting(None, help="GPU Auto Scaling group; default: terraform output")
    aws_endpoint_url: str | None = setting(None, help="AWS API endpoint override (tests)")
    never_registered_after_s: float | None = setting(
        None,
        min=0,
        help="flag instances this old that never registered; default: the launch hook timeout",
    )
    timeout_s: float = setting(10, min=0.1, help="HTTP and AWS call timeout")


@dataclass
class UpSection:
    preflight: bool = setting(True, help="run spotrelay preflight before applying")
    wait: bool = setting(True, help="after apply, wait for the group's desired ready nodes")
    wait_timeout_s: float = setting(
        2700, min=0, help="give up waiting after this long (exit 1); cold starts take minutes"
    )
    poll_interval_s: float = setting(10, min=0.1, help="how often the wait asks ASG and router")


@dataclass
class DeployConfig:
    terraform: TerraformSection = setting(default_factory=TerraformSection)
    deployment: DeploymentSection = setting(default_factory=DeploymentSection)
    model: ModelSection = setting(default_factory=ModelSection)
    pool: PoolSection = setting(default_factory=PoolSection)
    software: SoftwareSection = setting(default_factory=SoftwareSection)
    router: RouterSection = setting(default_factory=RouterSection)
    status: StatusSection = setting(default_factory=StatusSection)
    up: UpSection = setting(default_factory=UpSection)
    tags: dict[str, str] = setting(default_factory=dict, help="tags on every resource")
    variables: dict[str, Any] = setting(
        default_factory=dict, help="extra Terraform variables, passed through verbatim (win)"
    )
