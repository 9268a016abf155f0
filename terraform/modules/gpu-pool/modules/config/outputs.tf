output "user_data" {
  description = "The cloud-init user data (#cloud-config YAML), not base64-encoded."
  value       = local.user_data
}

output "user_data_base64" {
  description = "The cloud-init user data, gzip-compressed and base64-encoded for a launch template. EC2 takes 16 KB of user data before base64; the scripts alone come near that, and cloud-init decompresses gzip user data itself."
  value       = base64gzip(local.user_data)
}

output "agent_settings" {
  description = "The agent configuration as an object (the keys of /etc/spotrelay/agent.yaml)."
  value       = local.agent_settings
}

output "agent_yaml" {
  description = "The rendered /etc/spotrelay/agent.yaml."
  value       = local.agent_yaml
}

output "vllm_unit" {
  description = "The rendered vllm.service systemd unit."
  value       = local.vllm_unit
}

output "vllm_argv" {
  description = "The `vllm serve` command line, one token per element."
  value       = local.vllm_argv
}

output "install_script" {
  description = "The node bootstrap script cloud-init runs once."
  value       = local.install_script
}

output "served_model_name" {
  description = "The model name clients send and the router routes on."
  value       = local.served_model_name
}

output "instance_overrides" {
  description = "Mixed instances policy overrides, in preference order (empty with instance_requirements)."
  value       = local.instance_overrides

  precondition {
    condition     = length(local.unknown_types) == 0 || (!local.need_known && local.tp == 1)
    error_message = "No GPU memory on record for instance type(s) ${join(", ", local.unknown_types)}: add them to extra_gpu_specs (gpus, gpu_memory_gib) so the plan can check they hold the model."
  }

  precondition {
    condition     = length(local.too_few_gpus) == 0
    error_message = "model.tensor_parallel_size = ${local.tp} needs ${local.tp} GPUs, but ${join(", ", [for t in local.too_few_gpus : "${t} has ${local.gpu_specs[t].gpus}"])}."
  }

  precondition {
    condition     = length(local.too_small) == 0
    error_message = "The model needs ${local.need_text} of GPU memory; too small: ${join("; ", [for t in local.too_small : "${t} offers ${local.usable_gib[t]} GiB (${min(local.tp, local.gpu_specs[t].gpus)} x ${local.gpu_specs[t].gpu_memory_gib} GiB at gpu_memory_utilization ${local.gpu_mem_util})"])}. Remove these types or raise tensor_parallel_size."
  }
}

output "scaling" {
  description = "Sizes and purchase options of the Auto Scaling group, with max_size resolved."
  value       = local.scaling

  precondition {
    condition     = var.scaling.min_size <= var.scaling.desired_capacity && var.scaling.desired_capacity <= local.max_size
    error_message = "scaling must satisfy min_size <= desired_capacity <= max_size."
  }

  precondition {
    condition     = local.max_size > var.scaling.desired_capacity || local.max_size == 0
    error_message = "scaling.max_size must leave headroom above desired_capacity: capacity rebalancing launches a replacement before the old spot node terminates."
  }

  precondition {
    condition     = var.scaling.on_demand_base_capacity <= local.max_size
    error_message = "scaling.on_demand_base_capacity cannot exceed max_size."
  }
}

output "lifecycle_hook" {
  description = "The termination lifecycle hook (name, heartbeat timeout, default result)."
  value = {
    name              = local.hook_name
    heartbeat_timeout = var.lifecycle_hook.heartbeat_timeout
    default_result    = var.lifecycle_hook.default_result
    transition        = "autoscaling:EC2_INSTANCE_TERMINATING"
  }

  precondition {
    condition     = var.vllm.shutdown_timeout_s + var.spotrelay.safety_margin_s <= 120
    error_message = "vllm.shutdown_timeout_s + spotrelay.safety_margin_s must fit in the 120 s spot notice."
  }
}

output "tags" {
  description = "Tags for every resource of the pool."
  value       = local.tags
}

output "asg_tags" {
  description = "Tags as Auto Scaling group tag blocks, propagated at launch."
  value       = local.asg_tags
}

output "volumes" {
  description = "Root and model volume settings, with model_size_gib (0 = none) and has_model_volume resolved."
  value = merge(var.volumes, {
    model_size_gib   = local.model_size_gib
    has_model_volume = local.has_model_volume
  })

  precondition {
    condition     = local.model_size_gib != var.volumes.root_size_gib
    error_message = "volumes.model_size_gib must differ from volumes.root_size_gib: the node identifies the model volume by its size."
  }
}

output "package_s3_object" {
  description = "bucket/key of the spotrelay wheel in S3 the nodes may read (s3:GetObject), or null."
  value       = module.package.s3_object
}

output "package_requirement" {
  description = "What the node's boot script installs for spotrelay (with the agent,gpu extras)."
  value       = module.package.requirement
}
