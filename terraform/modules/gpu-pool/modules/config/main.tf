# Pure logic of the GPU pool: sizes, tags, instance overrides, the agent's
# configuration, the vLLM systemd unit and the cloud-init user data. No
# provider and no resource, so `terraform test` exercises all of it offline.

locals {
  # The node installs the spotrelay package (module.package below) with the
  # agent and NVML extras (spotrelay[agent,gpu]), nothing of the router or the
  # simulator.
  package_extras = "agent,gpu"
  package_sha256 = coalesce(module.package.sha256, "-")

  served_model_name = coalesce(var.model.served_name, var.model.name)
  hook_name         = coalesce(var.lifecycle_hook.name, "${var.name}-drain")
  vllm_pip_spec     = coalesce(var.vllm.pip_spec, local.s3_stream ? "vllm[runai]==${var.vllm.version}" : "vllm==${var.vllm.version}")
  # The EBS model volume costs money on every node: none by default when the
  # instance-store NVMe holds the model.
  model_size_gib   = coalesce(var.volumes.model_size_gib, var.instance_store ? 0 : 200)
  has_model_volume = local.model_size_gib > 0
  # Weights and the Hugging Face cache live under model_mount when a disk
  # backs it: the EBS model volume, or the instance-store NVMe.
  model_on_disk = local.has_model_volume || var.instance_store
  hf_home       = local.model_on_disk ? "${var.volumes.model_mount}/huggingface" : "/var/lib/vllm/huggingface"

  # Capacity rebalancing launches the replacement before the old node is
  # gone, so the group needs room above desired_capacity.
  max_size = coalesce(var.scaling.max_size, var.scaling.desired_capacity + var.scaling.max_size_headroom)
  scaling = {
    min_size                                 = var.scaling.min_size
    desired_capacity                         = var.scaling.desired_capacity
    max_size                                 = local.max_size
    on_demand_base_capacity                  = var.scaling.on_demand_base_capacity
    on_demand_percentage_above_base_capacity = var.scaling.on_demand_percentage_above_base_capacity
    spot_allocation_strategy                 = "price-capacity-optimized"
  }

  tags = merge(
    {
      "spotrelay:pool" = var.name
      "ManagedBy"      = "terraform"
    },
    var.tags,
  )
  # The ASG's tag blocks; propagated so instances and volumes carry them.
  asg_tags = [for k in sort(keys(local.tags)) : {
    key                 = k
    value               = local.tags[k]
    propagate_at_launch = true
  }]

  # The mixed instances policy overrides, in preference order.
  instance_overrides = [for t in local.explicit_types : { instance_type = t }]
  instance_families  = distinct([for t in var.instance_types : split(".", t)[0]])

  # /etc/spotrelay/agent.yaml: keys of spotrelay.agent.settings.AgentConfig.
  # node.id and node.advertise_url stay unset: the agent derives them from
  # IMDS (instance-id, http://<local-ipv4>:<engine port>).
  agent_settings = {
    router = {
      urls            = [var.router_url]
      node_token_file = "/etc/spotrelay/node-token"
    }
    engine = {
      url               = "http://127.0.0.1:${var.vllm.port}"
      model             = local.served_model_name
      process_name      = "vllm"
      systemd_unit      = "vllm.service"
      unhealthy_after_s = var.engine_unhealthy_after_s
    }
    imds = {
      url             = "http://169.254.169.254"
      poll_interval_s = var.spotrelay.imds_poll_interval_s
    }
    heartbeat = {
      interval_s = var.spotrelay.heartbeat_interval_s
    }
    drain = {
      on_rebalance    = var.spotrelay.drain_on_rebalance
      safety_margin_s = var.spotrelay.safety_margin_s
      stop_engine     = true
    }
    lifecycle = {
      asg_name         = var.name
      hook_name        = local.hook_name
      launch_hook_name = local.launch_hook_name
      launch_timeout_s = var.launch_hook.agent_timeout_s
      region           = var.region
    }
    metrics = {
      host = var.spotrelay.metrics_host
      port = var.spotrelay.metrics_port
    }
    state_dir = "/var/lib/spotrelay"
    webhook = {
      url = var.spotrelay.webhook_url
    }
    cloudwatch = var.cloudwatch
  }
  agent_yaml = "# Written by terraform (gpu-pool module); keys: docs/agent.md\n${yamlencode(local.agent_settings)}"

  # `vllm serve` arguments, one token each (the unit's ExecStart).
  vllm_argv = concat(
    ["/opt/vllm/venv/bin/vllm", "serve", local.vllm_model],
    ["--host", "0.0.0.0", "--port", tostring(var.vllm.port)],
    ["--served-model-name", local.served_model_name],
    ["--shutdown-timeout", tostring(var.vllm.shutdown_timeout_s)],
    ["--gpu-memory-utilization", tostring(var.model.gpu_memory_utilization)],
    ["--tensor-parallel-size", tostring(var.model.tensor_parallel_size)],
    local.vllm_load_args,
    var.model.max_model_len == null ? [] : ["--max-model-len", tostring(var.model.max_model_len)],
    var.model.extra_args,
  )

  vllm_unit = templatefile("${path.module}/templates/vllm.service.tftpl", {
    argv               = local.vllm_argv
    hf_home            = local.hf_home
    model_mount        = local.model_on_disk ? var.volumes.model_mount : ""
    shutdown_timeout_s = var.vllm.shutdown_timeout_s
  })

  install_script = templatefile("${path.module}/templates/install.sh.tftpl", {
    spotrelay_pip_spec   = module.package.requirement
    spotrelay_sha256     = local.package_sha256
    package_extras       = local.package_extras
    vllm_pip_spec        = local.vllm_pip_spec
    region               = var.region
    node_token_parameter = var.node_token_parameter
    hf_token_parameter   = var.model.hf_token_parameter == null ? "" : var.model.hf_token_parameter
    model_size_gib       = local.model_size_gib
    model_mount          = var.volumes.model_mount
    hf_home              = local.hf_home
    model_s3_uri         = local.s3_copy ? var.model_s3_uri : ""
    weights_at           = local.weights_at
  })

  user_data = templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    agent_yaml     = local.agent_yaml
    vllm_unit      = local.vllm_unit
    install_script = local.install_script
    fetch_package  = module.package.fetch_script
    fetch_model    = local.s3_copy ? file("${path.module}/templates/fetch-model.py") : ""
    nvme_script    = var.instance_store ? local.nvme_script : ""
  })
}

# The spotrelay package: ../../../shared/package reads the spec and supplies
# spotrelay-fetch-package, as for the routers.
module "package" {
  source = "../../../shared/package"

  pip_spec = coalesce(var.spotrelay.pip_spec, "-")
  sha256   = var.spotrelay.sha256
}

# A warning, not an error: one instance type works, but a spot pool with one
# type is interrupted far more often than a diversified one.
check "spot_diversification" {
  assert {
    condition     = local.use_requirements || length(var.instance_types) >= 3 && length(local.instance_families) >= 2
    error_message = "Spot pools are interrupted less when they may use at least 3 instance types from 2 or more families (now ${length(var.instance_types)} types, ${length(local.instance_families)} families)."
  }
}
