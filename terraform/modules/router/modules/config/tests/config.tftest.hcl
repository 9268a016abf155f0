# Offline tests of the router's pure logic (no provider, nothing created).

variables {
  name         = "llm"
  region       = "eu-west-1"
  subnet_count = 2
  redis = {
    endpoint = "master.llm-registry.abc123.euw1.cache.amazonaws.com"
  }
  settings = {
    allowed_networks = ["10.0.0.0/16"]
  }
  spotrelay_pip_spec = "s3://llm-artifacts/spotrelay/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08/spotrelay-0.1.0-py3-none-any.whl"
  spotrelay_sha256   = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
}

run "defaults" {
  command = apply

  assert {
    condition     = output.router_settings.server.port == 8080 && !contains(keys(output.router_settings.server), "workers")
    error_message = "Port 8080; worker count left to the router (one per core with redis)."
  }

  assert {
    condition     = output.router_settings.server.control_port == 8081 && output.router_settings.server.control_on_main_port == false
    error_message = "The control plane (/nodes, /metrics) has its own listener and is not served on the data port."
  }

  assert {
    condition     = output.router_settings.auth.node_token_file == "/etc/spotrelay/node-token"
    error_message = "The router reads the node token from the file the bootstrap writes."
  }

  assert {
    condition = jsonencode(output.router_settings.registry) == jsonencode({
      allowed_networks    = ["10.0.0.0/16"]
      backend             = "redis"
      redis_password_file = "/etc/spotrelay/redis-password"
      redis_url           = "rediss://master.llm-registry.abc123.euw1.cache.amazonaws.com:6379/0"
      ttl_s               = 6
    })
    error_message = "Registry: shared in ElastiCache over TLS (rediss://), password from a file, node URLs inside the VPC."
  }

  assert {
    condition     = !strcontains(output.router_yaml, "@")
    error_message = "No credential in the Redis URL."
  }

  assert {
    condition     = toset(keys(output.router_settings)) == toset(["server", "auth", "registry", "routing", "retry", "timeouts", "resume"])
    error_message = "router.yaml uses RouterConfig's sections only."
  }

  assert {
    condition     = jsonencode(yamldecode(output.router_yaml)) == jsonencode(output.router_settings)
    error_message = "router.yaml is the YAML form of router_settings."
  }

  assert {
    condition     = output.tags["spotrelay:router"] == "llm"
    error_message = "Resources are tagged with the router deployment."
  }

  assert {
    condition     = output.data_plane_auth == null
    error_message = "Without a parameter an internal deployment has no API keys."
  }
}

run "ssm_parameters" {
  command = apply

  assert {
    condition     = output.parameters.node_token.name == "/spotrelay/llm/node-token" && output.parameters.node_token.type == "SecureString"
    error_message = "The node token is the SecureString /spotrelay/<name>/node-token."
  }

  assert {
    condition     = output.parameters.redis_auth_token.name == "/spotrelay/llm/redis-auth-token" && output.parameters.redis_auth_token.type == "SecureString"
    error_message = "The Redis AUTH token is the SecureString /spotrelay/<name>/redis-auth-token."
  }

  assert {
    condition     = strcontains(output.install_script, "fetch '/spotrelay/llm/node-token' 'eu-west-1' '/etc/spotrelay/node-token'")
    error_message = "The bootstrap copies the node token from its parameter."
  }

  assert {
    condition     = strcontains(output.install_script, "fetch '/spotrelay/llm/redis-auth-token' 'eu-west-1' '/etc/spotrelay/redis-password'")
    error_message = "The bootstrap copies the Redis AUTH token into the file router.yaml names."
  }
}

run "public_listener_forwards_the_api_only" {
  command = apply

  assert {
    condition = alltrue([for p in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/healthz", "/tokenize", "/score", "/v2/rerank", "/version", "/ping"] :
    output.exposure[p].public])
    error_message = "The public listener forwards the OpenAI API, vLLM's public paths and the health check."
  }

  assert {
    condition = !anytrue([for p in ["/metrics", "/nodes", "/nodes/i-0abc", "/nodes/i-0abc/drain", "/instances/i-0abc/drain", "/readyz", "/reset_prefix_cache", "/sleep", "/invocations", "/collective_rpc", "/", "/v1", "/admin", "/V1/models"] :
    output.exposure[p].public])
    error_message = "The public listener never forwards /metrics, the control plane, vLLM's admin paths or unknown paths."
  }

  assert {
    condition     = output.not_found.status_code == "404" && jsondecode(output.not_found.message_body).error.code == "not_found"
    error_message = "Everything else is an OpenAI-shaped JSON 404."
  }

  assert {
    condition     = output.not_found.content_type == "application/json" && length(output.not_found.message_body) <= 1024
    error_message = "The 404 body is JSON and fits the ALB's 1024-byte fixed-response limit."
  }

  assert {
    condition     = alltrue([for r in output.public_path_rules : length(r) <= 5]) && length(output.control_paths) <= 5
    error_message = "An ALB rule takes at most 5 condition values."
  }

  assert {
    condition     = flatten(output.public_path_rules) == output.public_paths
    error_message = "The listener rules forward every public path, each once."
  }
}

run "heartbeat_listener_forwards_the_control_plane_only" {
  command = apply

  assert {
    condition = alltrue([for p in ["/nodes", "/nodes/i-0abc", "/nodes/i-0abc/drain", "/instances/i-0abc/drain", "/healthz", "/readyz"] :
    output.exposure[p].control])
    error_message = "Agents reach registration, drain and health through the internal endpoint."
  }

  assert {
    condition = !anytrue([for p in ["/v1/chat/completions", "/v1/models", "/metrics", "/", "/admin"] :
    output.exposure[p].control])
    error_message = "The internal endpoint serves no inference and no metrics."
  }
}

run "user_data" {
  command = apply

  assert {
    condition     = startswith(output.user_data, "#cloud-config\n")
    error_message = "User data is a cloud-config."
  }

  assert {
    condition     = yamldecode(output.user_data).write_files[0].content == output.router_yaml
    error_message = "cloud-init writes router.yaml verbatim."
  }

  assert {
    condition     = yamldecode(output.user_data).write_files[1].path == "/etc/systemd/system/spotrelay-router.service.d/10-secrets.conf"
    error_message = "cloud-init writes the unit's secrets drop-in."
  }

  assert {
    condition     = strcontains(output.unit_dropin, "LoadCredential=redis-password:/etc/spotrelay/redis-password") && strcontains(output.unit_dropin, "SPOTRELAY_REGISTRY_REDIS_PASSWORD_FILE=%d/redis-password")
    error_message = "The Redis password reaches the dynamic-user service as a credential."
  }

  assert {
    condition     = !strcontains(output.unit_dropin, "EnvironmentFile") && !strcontains(output.install_script, "SPOTRELAY_AUTH_API_KEYS")
    error_message = "No API key plumbing without an API key parameter."
  }

  assert {
    condition     = strcontains(yamldecode(output.user_data).write_files[2].content, "systemctl enable --now spotrelay-router.service")
    error_message = "The bootstrap enables the router unit from the package."
  }

  assert {
    condition     = strcontains(output.install_script, "pip install --quiet \"$wheel[router]\"") && strcontains(output.install_script, "-m spotrelay.core.fetch_secret")
    error_message = "Routers get the router extra and fetch secrets with the packaged fetcher."
  }

  assert {
    condition     = !strcontains(output.user_data, "eni-") && !strcontains(output.user_data, "attach")
    error_message = "Routers no longer pin a network interface."
  }
}

run "user_data_independent_of_router_count" {
  command = apply

  variables {
    router_count = 5
  }

  assert {
    condition     = output.user_data == run.user_data.user_data
    error_message = "Every router gets the same user data whatever their number."
  }
}

run "api_keys_from_ssm" {
  command = apply

  variables {
    api_keys_parameter = "/spotrelay/llm/api-keys"
    internet_facing    = true
  }

  assert {
    condition     = strcontains(output.install_script, "fetch '/spotrelay/llm/api-keys' 'eu-west-1' '/etc/spotrelay/router-secrets.env' SPOTRELAY_AUTH_API_KEYS")
    error_message = "The bootstrap turns the API key parameter into the router's SPOTRELAY_AUTH_API_KEYS."
  }

  assert {
    condition     = strcontains(output.unit_dropin, "EnvironmentFile=/etc/spotrelay/router-secrets.env")
    error_message = "The unit reads the API keys from the root-only environment file."
  }

  assert {
    condition     = output.data_plane_auth == "/spotrelay/llm/api-keys"
    error_message = "The API keys come from the parameter."
  }
}

run "names_fit_aws_limits" {
  command = apply

  variables {
    name = "abcdefghijklmnopqrstuvwxyzabcd-e" # the 31st character is a hyphen
  }

  assert {
    condition     = length(output.resource_names.public_lb) <= 32 && length(output.resource_names.heartbeat_lb) <= 32 && length(output.resource_names.registry) <= 40
    error_message = "Load balancer names fit 32 characters, the replication group id 40."
  }

  assert {
    condition     = output.resource_names.public_lb != output.resource_names.heartbeat_lb
    error_message = "The two load balancers get different names even for the longest deployment name."
  }

  assert {
    condition     = !endswith(output.resource_names.registry, "--registry") && !strcontains(output.resource_names.registry, "--")
    error_message = "No double hyphen in the replication group id."
  }
}

run "rejects_double_hyphen_name" {
  command = plan
  variables {
    name = "llm--a"
  }
  expect_failures = [var.name]
}

run "rolling_refresh_keeps_half" {
  command = apply

  assert {
    condition     = output.instance_refresh.min_healthy_percentage >= 50 && output.instance_refresh.max_healthy_percentage > 100
    error_message = "A refresh keeps at least half the routers and launches replacements first."
  }
}

run "rejects_internet_facing_without_api_keys" {
  command = plan
  variables {
    internet_facing = true
  }
  expect_failures = [output.data_plane_auth]
}

run "rejects_refresh_below_half" {
  command = plan
  variables {
    refresh = {
      min_healthy_percentage = 0
    }
  }
  expect_failures = [var.refresh]
}

run "rejects_control_port_equal_to_port" {
  command = plan
  variables {
    control_port = 8080
  }
  expect_failures = [var.control_port]
}

run "rejects_single_subnet" {
  command = plan
  variables {
    subnet_count = 1
  }
  expect_failures = [var.subnet_count]
}

run "rejects_bad_cidr" {
  command = plan
  variables {
    settings = {
      allowed_networks = ["10.0.0.0/33"]
    }
  }
  expect_failures = [var.settings]
}

run "rejects_idle_timeout_below_first_byte" {
  command = plan
  variables {
    load_balancer_idle_timeout = 300
  }
  expect_failures = [output.load_balancer_idle_timeout]
}

run "metrics_inside_the_vpc" {
  command = apply
  variables {
    vpc_cidrs        = ["10.0.0.0/16", "100.64.0.0/16"]
    monitoring_cidrs = ["10.0.50.0/24", "100.64.3.0/24", "10.0.0.0/16"]
  }
  assert {
    condition     = output.monitoring_cidrs == tolist(["10.0.50.0/24", "100.64.3.0/24", "10.0.0.0/16"])
    error_message = "Networks inside any of the VPC's blocks may scrape /metrics."
  }
}

run "rejects_metrics_outside_the_vpc" {
  command = plan
  variables {
    vpc_cidrs        = ["10.0.0.0/16"]
    monitoring_cidrs = ["10.0.50.0/24", "192.168.7.0/24"]
  }
  expect_failures = [output.monitoring_cidrs]
}

run "rejects_metrics_wider_than_the_vpc" {
  command = plan
  variables {
    vpc_cidrs        = ["10.0.0.0/16"]
    monitoring_cidrs = ["10.0.0.0/8"]
  }
  expect_failures = [output.monitoring_cidrs]
}

run "rejects_zero_routers" {
  command = plan
  variables {
    router_count = 0
  }
  expect_failures = [var.router_count]
}

run "package_as_a_pypi_version_pinned_by_hash" {
  command = apply

  variables {
    spotrelay_pip_spec = "0.1.0"
  }

  assert {
    condition     = strcontains(output.install_script, "'spotrelay==0.1.0' '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08'") && strcontains(output.install_script, "pip install --quiet \"$wheel[router]\"")
    error_message = "A bare version is fetched pinned by its hash, then installed from the file with the router extra."
  }

  assert {
    condition     = output.package_s3_object == null
    error_message = "No S3 access for an index install."
  }
}

run "package_as_a_wheel_in_s3" {
  command = apply

  assert {
    condition     = output.package_s3_object == "llm-artifacts/spotrelay/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08/spotrelay-0.1.0-py3-none-any.whl"
    error_message = "The instance role may read exactly that one object."
  }

  assert {
    condition     = strcontains(output.install_script, "spotrelay-fetch-package /opt/spotrelay/venv/bin/python") && strcontains(output.install_script, "'s3://llm-artifacts/spotrelay/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08/spotrelay-0.1.0-py3-none-any.whl' '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08'") && !strcontains(output.install_script, "pip install --quiet 's3://")
    error_message = "An S3 wheel is fetched and hash-checked by spotrelay-fetch-package, never handed to pip as an s3:// URL."
  }

  assert {
    condition     = anytrue([for f in yamldecode(output.user_data).write_files : f.path == "/usr/local/sbin/spotrelay-fetch-package" && strcontains(f.content, "sha256sum")])
    error_message = "cloud-init writes the fetcher that checks the sha256."
  }
}
