# Model-fit instance selection (docs/deploy.md, "Choosing instances"). The
# logic and the GPU memory table live in modules/config (instance_selection.tf).

variable "model_gpu_memory_gib" {
  description = "GPU memory the model needs in GiB (weights + KV cache); overrides the estimate from model_params_billion. With either, every instance type is checked at plan time."
  type        = number
  default     = null
}

variable "model_params_billion" {
  description = "Parameter count in billions: need = params x 1e9 x model_bytes_per_param / 2^30 x (1 + model_kv_cache_fraction) GiB."
  type        = number
  default     = null
}

variable "model_bytes_per_param" {
  description = "Bytes per parameter of the served weights: 2 (bf16/fp16), 1 (fp8/int8), 0.5 (4-bit)."
  type        = number
  default     = 2
}

variable "model_kv_cache_fraction" {
  description = "KV cache reserved on top of the weights, as a fraction of the weights."
  type        = number
  default     = 0.2
}

variable "instance_requirements" {
  description = "Attribute-based selection instead of instance_types (see modules/config): vcpu_min/max, memory_gib_min/max, allowed_instance_types or excluded_instance_types. The module adds NVIDIA GPUs, exactly tensor_parallel_size of them, with enough total GPU memory for the model."
  type = object({
    vcpu_min                = optional(number, 4)
    vcpu_max                = optional(number)
    memory_gib_min          = optional(number, 16)
    memory_gib_max          = optional(number)
    allowed_instance_types  = optional(list(string), [])
    excluded_instance_types = optional(list(string), [])
  })
  default = null
}

variable "extra_gpu_specs" {
  description = "GPU specs (gpus, gpu_memory_gib per GPU) for instance types missing from the module's table."
  type = map(object({
    gpus           = number
    gpu_memory_gib = number
  }))
  default = {}
}

output "model_memory" {
  description = "The model's GPU memory need and what each explicit instance type offers vLLM."
  value       = module.config.model_memory
}
