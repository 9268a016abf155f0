variable "name" {
  description = "Name of the GPU pool; prefixes the Auto Scaling group, lifecycle hook and tags."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,30}[a-z0-9]$", var.name))
    error_message = "name must be 2-32 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "region" {
  description = "AWS region the nodes run in (the agent's lifecycle calls and the token fetch use it)."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must look like an AWS region, e.g. us-east-1."
  }
}

variable "instance_types" {
  description = "GPU instance types the mixed instances policy may launch, most preferred first (ignored when instance_requirements is set). Spot capacity is deepest when several families and sizes are allowed. The defaults hold a 7-8B 16-bit model (24 GiB GPUs and up); g4dn (T4, 16 GiB) does not, so it is not among them. Each type must hold the model: see model_gpu_memory_gib."
  type        = list(string)
  default     = ["g6.xlarge", "g5.xlarge", "g6e.xlarge", "g6.2xlarge", "g5.2xlarge", "g6e.2xlarge"]

  validation {
    condition     = length(var.instance_types) >= 1 && length(var.instance_types) <= 20
    error_message = "instance_types must list between 1 and 20 instance types."
  }

  validation {
    condition     = length(distinct(var.instance_types)) == length(var.instance_types)
    error_message = "instance_types must not contain duplicates."
  }

  validation {
    condition = alltrue([
      for t in var.instance_types :
      can(regex("^(g4dn|g5|g6|g6e|gr6|g7e|p4d|p4de|p5|p5e|p5en|p6-b200)\\.([0-9]+)?x?large$", t))
    ])
    error_message = "instance_types must be NVIDIA GPU instance types (families g4dn, g5, g6, g6e, gr6, g7e, p4d, p4de, p5, p5e, p5en, p6-b200), e.g. g6.xlarge."
  }
}

variable "scaling" {
  description = "Pool size and purchase options. max_size defaults to desired_capacity + max_size_headroom so capacity rebalancing can launch a replacement before the old node goes."
  type = object({
    min_size                                 = optional(number, 0)
    desired_capacity                         = optional(number, 1)
    max_size                                 = optional(number)
    max_size_headroom                        = optional(number, 1)
    on_demand_base_capacity                  = optional(number, 0)
    on_demand_percentage_above_base_capacity = optional(number, 0)
  })
  default = {}

  validation {
    condition = (
      var.scaling.min_size >= 0 && var.scaling.desired_capacity >= 0 &&
      var.scaling.max_size_headroom >= 0 && var.scaling.on_demand_base_capacity >= 0
    )
    error_message = "scaling sizes and on_demand_base_capacity must be >= 0."
  }

  validation {
    condition = (
      var.scaling.on_demand_percentage_above_base_capacity >= 0 &&
      var.scaling.on_demand_percentage_above_base_capacity <= 100
    )
    error_message = "scaling.on_demand_percentage_above_base_capacity must be between 0 and 100."
  }
}

variable "lifecycle_hook" {
  description = "Termination lifecycle hook: the agent completes it after draining. heartbeat_timeout is capped at 120 s because a spot interruption notice gives two minutes."
  type = object({
    name              = optional(string)
    heartbeat_timeout = optional(number, 120)
    default_result    = optional(string, "CONTINUE")
  })
  default = {}

  validation {
    condition     = var.lifecycle_hook.heartbeat_timeout >= 30 && var.lifecycle_hook.heartbeat_timeout <= 120
    error_message = "lifecycle_hook.heartbeat_timeout must be between 30 and 120 seconds (a spot notice is 120 s)."
  }

  validation {
    condition     = contains(["CONTINUE", "ABANDON"], var.lifecycle_hook.default_result)
    error_message = "lifecycle_hook.default_result must be CONTINUE or ABANDON."
  }
}

variable "model" {
  description = "The model vLLM serves. name is a Hugging Face id or a local path; served_name is what clients put in \"model\" (default: name); extra_args are passed to `vllm serve` verbatim, one token each."
  type = object({
    name                   = string
    served_name            = optional(string)
    max_model_len          = optional(number)
    gpu_memory_utilization = optional(number, 0.9)
    tensor_parallel_size   = optional(number, 1)
    extra_args             = optional(list(string), [])
    hf_token_parameter     = optional(string)
  })

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_.:/-]*$", var.model.name))
    error_message = "model.name must be a Hugging Face id or an absolute path made of letters, digits and _.:/- (no spaces or quotes)."
  }

  validation {
    condition     = var.model.served_name == null || can(regex("^[A-Za-z0-9][A-Za-z0-9_.:/-]*$", coalesce(var.model.served_name, "x")))
    error_message = "model.served_name must be letters, digits and _.:/- (no spaces or quotes)."
  }

  validation {
    condition     = alltrue([for a in var.model.extra_args : can(regex("^[A-Za-z0-9_.:/,=+@-]+$", a))])
    error_message = "model.extra_args must be single tokens of letters, digits and _.:/,=+@- (no spaces, quotes or shell characters)."
  }

  validation {
    condition = !anytrue([
      for a in var.model.extra_args :
      can(regex("^--(host|port|shutdown-timeout|served-model-name|download-dir)(=|$)", a))
    ])
    error_message = "model.extra_args must not set --host, --port, --shutdown-timeout, --served-model-name or --download-dir: the module manages them."
  }

  validation {
    condition     = var.model.gpu_memory_utilization > 0 && var.model.gpu_memory_utilization <= 1
    error_message = "model.gpu_memory_utilization must be in (0, 1]."
  }

  validation {
    condition     = contains([1, 2, 4, 8], var.model.tensor_parallel_size)
    error_message = "model.tensor_parallel_size must be 1, 2, 4 or 8."
  }

  validation {
    condition     = var.model.max_model_len == null || try(var.model.max_model_len >= 256, false)
    error_message = "model.max_model_len must be at least 256 when set."
  }

  validation {
    condition     = var.model.hf_token_parameter == null || can(regex("^(/[A-Za-z0-9_.\\-/]+|arn:aws[a-z-]*:ssm:[a-z0-9-]+:[0-9]{12}:parameter/[A-Za-z0-9_.\\-/]+)$", coalesce(var.model.hf_token_parameter, "/x")))
    error_message = "model.hf_token_parameter must be an SSM parameter name starting with / or a parameter ARN."
  }
}

variable "vllm" {
  description = "vLLM installation and server options. version is pinned: a node must not pick up a new vLLM on a spot replacement. shutdown_timeout_s is vLLM's --shutdown-timeout, the grace for in-flight requests on SIGTERM."
  type = object({
    version            = optional(string, "0.33.0")
    pip_spec           = optional(string)
    port               = optional(number, 8000)
    shutdown_timeout_s = optional(number, 90)
  })
  default = {}

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+(\\.[0-9]+)?([.a-z0-9]*)?$", var.vllm.version))
    error_message = "vllm.version must be a pinned version such as 0.33.0."
  }

  validation {
    condition     = var.vllm.pip_spec == null || can(regex("^[A-Za-z0-9_.:/,=<>!~+@%\\[\\]-]+$", coalesce(var.vllm.pip_spec, "x")))
    error_message = "vllm.pip_spec must be one pip requirement or URL without spaces or quotes."
  }

  validation {
    condition     = var.vllm.port >= 1024 && var.vllm.port <= 65535
    error_message = "vllm.port must be between 1024 and 65535."
  }

  validation {
    condition     = var.vllm.shutdown_timeout_s >= 0 && var.vllm.shutdown_timeout_s <= 110
    error_message = "vllm.shutdown_timeout_s must be between 0 and 110 seconds: it has to fit inside the two-minute spot notice."
  }
}

variable "spotrelay" {
  description = "The spotrelay agent on each node: pip_spec is the package (s3://bucket/key.whl, as `spotrelay up` uploads it, a pip requirement such as spotrelay==X, a bare version, or a wheel URL; the agent,gpu extras are added) and sha256 its file's hash, checked before anything installs it (both required here, their form checked by ../../../shared/package); the rest becomes /etc/spotrelay/agent.yaml."
  type = object({
    pip_spec             = optional(string)
    sha256               = optional(string)
    drain_on_rebalance   = optional(bool, false)
    safety_margin_s      = optional(number, 10)
    heartbeat_interval_s = optional(number, 2)
    imds_poll_interval_s = optional(number, 1)
    metrics_host         = optional(string, "127.0.0.1")
    metrics_port         = optional(number, 9101)
    webhook_url          = optional(string)
  })
  default = {}

  validation {
    condition     = var.spotrelay.pip_spec != null && var.spotrelay.sha256 != null
    error_message = "spotrelay.pip_spec and spotrelay.sha256 are required: the wheel `spotrelay up` uploads (s3://bucket/key.whl and its sha256), or a release pinned by hash (spotrelay==X and the sha256 of its file)."
  }

  validation {
    condition     = var.spotrelay.heartbeat_interval_s > 0 && var.spotrelay.heartbeat_interval_s <= 10
    error_message = "spotrelay.heartbeat_interval_s must be in (0, 10] so the router's 15 s TTL sees several heartbeats."
  }

  validation {
    condition     = var.spotrelay.safety_margin_s >= 0 && var.spotrelay.safety_margin_s < 120
    error_message = "spotrelay.safety_margin_s must be between 0 and 119 seconds."
  }

  validation {
    condition     = var.spotrelay.metrics_port >= 0 && var.spotrelay.metrics_port <= 65535
    error_message = "spotrelay.metrics_port must be between 0 and 65535 (0 disables metrics)."
  }
}

variable "router_url" {
  description = "The one endpoint the agent registers with: the routers' internal heartbeat load balancer (they share one registry). Never a router's own address, so adding routers does not change the user data."
  type        = string

  validation {
    condition     = can(regex("^https?://[A-Za-z0-9.\\-\\[\\]:]+(/.*)?$", var.router_url))
    error_message = "router_url must be an http:// or https:// URL."
  }
}

variable "node_token_parameter" {
  description = "SSM SecureString parameter (name starting with / or ARN) holding the node token; fetched at boot into /etc/spotrelay/node-token."
  type        = string

  validation {
    condition     = can(regex("^(/[A-Za-z0-9_.\\-/]+|arn:aws[a-z-]*:ssm:[a-z0-9-]+:[0-9]{12}:parameter/[A-Za-z0-9_.\\-/]+)$", var.node_token_parameter))
    error_message = "node_token_parameter must be an SSM parameter name starting with / or a parameter ARN."
  }
}

variable "volumes" {
  description = "Root and model volume sizes in GiB. The model volume holds the weights and the Hugging Face cache; model_size_gib = 0 keeps them on the root volume (or the instance store). Default: no model volume with instance_store (the NVMe holds the model), 200 GiB without. The sizes must differ: the node finds the model volume by its size."
  type = object({
    root_size_gib  = optional(number, 100)
    model_size_gib = optional(number)
    model_mount    = optional(string, "/opt/models")
  })
  default = {}

  validation {
    condition     = var.volumes.root_size_gib >= 50 && var.volumes.root_size_gib <= 16384
    error_message = "volumes.root_size_gib must be between 50 and 16384 (the Deep Learning AMI needs about 50 GiB)."
  }

  validation {
    condition     = var.volumes.model_size_gib == null || try(var.volumes.model_size_gib == 0 || (var.volumes.model_size_gib >= 20 && var.volumes.model_size_gib <= 16384), false)
    error_message = "volumes.model_size_gib must be 0 (no model volume) or between 20 and 16384."
  }

  validation {
    condition     = can(regex("^/[A-Za-z0-9_./-]+$", var.volumes.model_mount))
    error_message = "volumes.model_mount must be an absolute path."
  }
}

variable "tags" {
  description = "Tags added to every resource of the pool."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.tags) : !startswith(lower(k), "aws:")])
    error_message = "tags must not use the reserved aws: prefix."
  }
}
