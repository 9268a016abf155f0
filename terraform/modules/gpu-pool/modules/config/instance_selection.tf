# Model-fit instance selection (docs/deploy.md, "Choosing instances"): how
# much GPU memory the model needs, which instance types can hold it, and the
# attribute-based alternative to an explicit type list.
#
#   need_gib = model_gpu_memory_gib, or
#              params_billion * 1e9 * bytes_per_param / 2^30 * (1 + kv_cache_fraction)
#   a type fits when  gpu_memory_gib_per_gpu * tensor_parallel_size
#                     * gpu_memory_utilization  >=  need_gib
#   and it has at least tensor_parallel_size GPUs.

variable "model_gpu_memory_gib" {
  description = "GPU memory the model needs in GiB (weights + KV cache), if known; overrides the estimate from model_params_billion."
  type        = number
  default     = null

  validation {
    condition     = var.model_gpu_memory_gib == null || try(var.model_gpu_memory_gib > 0, false)
    error_message = "model_gpu_memory_gib must be a positive number of GiB."
  }
}

variable "model_params_billion" {
  description = "Parameter count of the model in billions (e.g. 7.6 for Qwen2.5-7B); with model_bytes_per_param and model_kv_cache_fraction it estimates the GPU memory need."
  type        = number
  default     = null

  validation {
    condition     = var.model_params_billion == null || try(var.model_params_billion > 0, false)
    error_message = "model_params_billion must be a positive number."
  }
}

variable "model_bytes_per_param" {
  description = "Bytes per parameter of the served weights: 2 for bf16/fp16, 1 for fp8/int8, 0.5 for 4-bit."
  type        = number
  default     = 2

  validation {
    condition     = contains([0.5, 1, 2, 4], var.model_bytes_per_param)
    error_message = "model_bytes_per_param must be 0.5, 1, 2 or 4."
  }
}

variable "model_kv_cache_fraction" {
  description = "KV cache (and activations) to reserve on top of the weights, as a fraction of the weights."
  type        = number
  default     = 0.2

  validation {
    condition     = var.model_kv_cache_fraction >= 0 && var.model_kv_cache_fraction <= 10
    error_message = "model_kv_cache_fraction must be between 0 and 10."
  }
}

variable "instance_requirements" {
  description = "Attribute-based instance selection instead of instance_types: NVIDIA GPUs with exactly tensor_parallel_size GPUs and enough total GPU memory for the model, within these vCPU and memory bounds; allowed_instance_types or excluded_instance_types (patterns like \"g6*\", not both) narrow the families."
  type = object({
    vcpu_min                = optional(number, 4)
    vcpu_max                = optional(number)
    memory_gib_min          = optional(number, 16)
    memory_gib_max          = optional(number)
    allowed_instance_types  = optional(list(string), [])
    excluded_instance_types = optional(list(string), [])
  })
  default = null

  validation {
    condition     = var.instance_requirements == null || try(length(var.instance_requirements.allowed_instance_types) == 0 || length(var.instance_requirements.excluded_instance_types) == 0, false)
    error_message = "instance_requirements: set allowed_instance_types or excluded_instance_types, not both (AWS accepts one)."
  }

  validation {
    condition     = var.instance_requirements == null || try(var.instance_requirements.vcpu_min >= 1 && var.instance_requirements.memory_gib_min >= 1, false)
    error_message = "instance_requirements.vcpu_min and memory_gib_min must be at least 1."
  }
}

variable "extra_gpu_specs" {
  description = "GPU specs of instance types missing from the module's table (gpus per instance, GPU memory per GPU in GiB), e.g. { \"g7e.2xlarge\" = { gpus = 1, gpu_memory_gib = 96 } }."
  type = map(object({
    gpus           = number
    gpu_memory_gib = number
  }))
  default = {}
}

locals {
  # GPUs per instance and memory per GPU (GiB) as listed in the EC2 instance
  # type documentation (accelerated computing). Sizes of one family share a
  # GPU: T4 16, A10G 24, L4 24, L40S 48, A100 40/80, H100 80, H200 141.
  gpu_table = merge(
    { for s in ["xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge"] : "g4dn.${s}" => { gpus = 1, gpu_memory_gib = 16 } },
    { "g4dn.12xlarge" = { gpus = 4, gpu_memory_gib = 16 } },
    { for s in ["xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge"] : "g5.${s}" => { gpus = 1, gpu_memory_gib = 24 } },
    { "g5.12xlarge" = { gpus = 4, gpu_memory_gib = 24 }, "g5.24xlarge" = { gpus = 4, gpu_memory_gib = 24 }, "g5.48xlarge" = { gpus = 8, gpu_memory_gib = 24 } },
    { for s in ["xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge"] : "g6.${s}" => { gpus = 1, gpu_memory_gib = 24 } },
    { "g6.12xlarge" = { gpus = 4, gpu_memory_gib = 24 }, "g6.24xlarge" = { gpus = 4, gpu_memory_gib = 24 }, "g6.48xlarge" = { gpus = 8, gpu_memory_gib = 24 } },
    { "gr6.4xlarge" = { gpus = 1, gpu_memory_gib = 24 }, "gr6.8xlarge" = { gpus = 1, gpu_memory_gib = 24 } },
    { for s in ["xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge"] : "g6e.${s}" => { gpus = 1, gpu_memory_gib = 48 } },
    { "g6e.12xlarge" = { gpus = 4, gpu_memory_gib = 48 }, "g6e.24xlarge" = { gpus = 4, gpu_memory_gib = 48 }, "g6e.48xlarge" = { gpus = 8, gpu_memory_gib = 48 } },
    {
      "p4d.24xlarge"  = { gpus = 8, gpu_memory_gib = 40 }
      "p4de.24xlarge" = { gpus = 8, gpu_memory_gib = 80 }
      "p5.48xlarge"   = { gpus = 8, gpu_memory_gib = 80 }
      "p5e.48xlarge"  = { gpus = 8, gpu_memory_gib = 141 }
      "p5en.48xlarge" = { gpus = 8, gpu_memory_gib = 141 }
    },
  )
  gpu_specs = merge(local.gpu_table, var.extra_gpu_specs)

  tp             = var.model.tensor_parallel_size
  gpu_mem_util   = var.model.gpu_memory_utilization
  weights_gib    = var.model_params_billion == null ? null : var.model_params_billion * 1000000000 * var.model_bytes_per_param / 1073741824
  estimated_need = local.weights_gib == null ? null : local.weights_gib * (1 + var.model_kv_cache_fraction)
  need_gib       = var.model_gpu_memory_gib != null ? var.model_gpu_memory_gib : local.estimated_need
  need_known     = local.need_gib != null

  use_requirements = var.instance_requirements != null
  explicit_types   = local.use_requirements ? [] : var.instance_types

  # What vLLM may use on each explicit type: tp GPUs at gpu_memory_utilization.
  unknown_types = [for t in local.explicit_types : t if !contains(keys(local.gpu_specs), t)]
  usable_gib = {
    for t in local.explicit_types : t => floor(local.gpu_specs[t].gpu_memory_gib * min(local.tp, local.gpu_specs[t].gpus) * local.gpu_mem_util * 10 + 0.001) / 10
    if contains(keys(local.gpu_specs), t)
  }
  too_few_gpus = [for t in local.explicit_types : t if contains(keys(local.gpu_specs), t) && try(local.gpu_specs[t].gpus < local.tp, false)]
  too_small    = local.need_known ? [for t, usable in local.usable_gib : t if usable < local.need_gib] : []
  need_text    = local.need_known ? format("%.1f GiB", local.need_gib) : "unknown"

  # Attribute-based selection: exactly tp NVIDIA GPUs whose total memory,
  # at gpu_memory_utilization, holds the model, in current-generation types
  # only (no previous-generation GPUs the AMI's drivers may not support).
  requirements = local.use_requirements ? {
    instance_generations = ["current"]
    # With instance_store the model lives on local NVMe: only types that have it.
    local_storage                = var.instance_store ? "required" : "included"
    vcpu_count                   = { min = var.instance_requirements.vcpu_min, max = var.instance_requirements.vcpu_max }
    memory_mib                   = { min = ceil(var.instance_requirements.memory_gib_min * 1024), max = var.instance_requirements.memory_gib_max == null ? null : ceil(var.instance_requirements.memory_gib_max * 1024) }
    accelerator_manufacturers    = ["nvidia"]
    accelerator_types            = ["gpu"]
    accelerator_count            = { min = local.tp, max = local.tp }
    accelerator_total_memory_mib = { min = local.need_known ? ceil(local.need_gib / local.gpu_mem_util * 1024) : 0 }
    allowed_instance_types       = var.instance_requirements.allowed_instance_types
    excluded_instance_types      = var.instance_requirements.excluded_instance_types
  } : null
}

output "model_memory" {
  description = "The model's GPU memory need (need_gib, weights_gib, source) and what each explicit instance type offers vLLM (usable_gib)."
  value = {
    need_gib    = local.need_gib
    weights_gib = local.weights_gib
    source      = var.model_gpu_memory_gib != null ? "model_gpu_memory_gib" : (local.need_known ? "model_params_billion" : "unknown")
    usable_gib  = local.usable_gib
  }
}

output "instance_requirements" {
  description = "Attribute-based instance requirements for the mixed instances policy, or null when explicit instance_types are used."
  value       = local.requirements

  precondition {
    condition     = !local.use_requirements || local.need_known
    error_message = "instance_requirements needs the model's memory: set model_gpu_memory_gib or model_params_billion."
  }
}

# A warning, not an error: without the model's size the plan cannot tell
# whether a type holds it.
check "model_fit_known" {
  assert {
    condition     = local.need_known
    error_message = "Set model_gpu_memory_gib or model_params_billion so the plan can check that every instance type holds the model."
  }
}
